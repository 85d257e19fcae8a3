"""`npy-dtypes` (a test plugin): coverage of a .npy file."""

from quantgate.guards.coverage_guard import CoverageGuard


class NpyDtypesGuard(CoverageGuard):
    id = "npy-dtypes"
    description = "the array's dtype -> coverage"
    formats = ("npy",)


GUARD = NpyDtypesGuard()
