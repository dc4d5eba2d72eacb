"""The contivd test suite, run with trial."""
