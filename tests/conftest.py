import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# Tests are small: one thread avoids oversubscribing a 2-core CI machine.
torch.set_num_threads(int(os.environ.get("THINKFAST_TEST_THREADS", "1")))
