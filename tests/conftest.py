"""Suite-wide settings."""

import os

# The kernels' first use times a few candidate tiles per shape (adderize.tvm_schedules.build);
# the suite builds hundreds of small kernels once each and checks results, not speed, so it
# takes the first candidate. tests/test_kernel_select.py covers the measured selection.
os.environ.setdefault("ADDERIZE_KERNEL_SELECT", "first")
