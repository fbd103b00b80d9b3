"""torch-rechub 0.9.0's model classes without its package imports: rechub's
__init__ files pull in its trainers and data utilities (pandas, sklearn, tqdm),
so only the model files are loaded, under stub packages. Shared by
bench/peers/torch_census_mmoe.py (--model ple) and spec/fixtures/make_ple_fixture.py.

  from rechub_models import import_rechub
  DenseFeature, CGC, PLE = import_rechub()   # pip install torch-rechub==0.9.0 --no-deps"""
import importlib.util
import os
import sys
import types

import numpy as np


def import_rechub():
    """(DenseFeature, CGC, PLE) from torch_rechub; the stub packages are made once"""
    if "torch_rechub.utils.data" not in sys.modules:
        spec = importlib.util.find_spec("torch_rechub")
        if spec is None:
            sys.exit("torch-rechub is needed: pip install torch-rechub==0.9.0 --no-deps")
        root = os.path.dirname(spec.origin)
        for pkg in ["torch_rechub", "torch_rechub.basic", "torch_rechub.models", "torch_rechub.models.multi_task",
                    "torch_rechub.utils"]:
            m = types.ModuleType(pkg)
            m.__path__ = [os.path.join(root, *pkg.split(".")[1:])]
            sys.modules[pkg] = m
        data = types.ModuleType("torch_rechub.utils.data")
        data.get_auto_embedding_dim = lambda n: int(np.floor(6 * np.power(n, 0.26)))
        sys.modules["torch_rechub.utils.data"] = data
    from torch_rechub.basic.features import DenseFeature
    from torch_rechub.models.multi_task.ple import CGC, PLE
    return DenseFeature, CGC, PLE
