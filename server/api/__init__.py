"""HTTP: thin routes over ``ClassificationService``, plus middleware and error rendering."""
