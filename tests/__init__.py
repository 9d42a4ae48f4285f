"""The test suite, in tiers (see conftest.py): a package, so that tests.helpers imports the same way from every
folder and test files in different folders never clash by name."""
