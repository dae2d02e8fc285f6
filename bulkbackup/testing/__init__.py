"""Tools for trying bulkbackup without GitHub: a GitHub stand-in and private services.

Used by the demo (jobs/demo.sh), the benchmarks and the tests; not by the jobs themselves.
"""
