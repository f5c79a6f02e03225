"""``imgserve train``: transfer learning on a folder of the user's own classes (``pipeline``)."""
