"""Reads a moelua checkpoint with the reference safetensors library and prints
each tensor's name, dtype, shape and sum, plus the metadata keys.
usage: python3 bench/peers/check_safetensors.py FILE   (pip install safetensors numpy)"""
import sys
from safetensors import safe_open

with safe_open(sys.argv[1], framework="numpy") as f:
    print("metadata keys:", sorted((f.metadata() or {}).keys()))
    for k in sorted(f.keys()):
        t = f.get_tensor(k)
        print(f"{k}\t{t.dtype}\t{list(t.shape)}\t{float(t.astype('float64').sum()):.6g}")
