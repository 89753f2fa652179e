"""Hand-written components that scripts/build_datasets.py composes into the bundled datasets."""
