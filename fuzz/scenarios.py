"""Hostile-input scenarios, by class: does each end in a clean refusal (or the right result)?

    PYTHONPATH=. python3 fuzz/scenarios.py            # every scenario; a table by class at the end
    PYTHONPATH=. python3 fuzz/scenarios.py -k pickle  # the scenarios whose class or name contains "pickle"

Each scenario runs in its own subprocess with a time limit (20 s) and an address-space limit (4 GiB), so
a hang, a crash or a runaway allocation is recorded instead of taking the run down. A scenario is
*clean* when:

  API    the snippet prints OK: it caught a GPTJError (or got the right result, where the scenario
         is a misuse that has a right answer, such as a leftover temp file being cleaned up);
  CLI    the command exits with status 2 and says what went wrong in one line starting "gptj".

Anything else (a traceback, a signal, a timeout, a MemoryError, a wrong result accepted) is a failure,
listed with the last line of its output.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
from typing import List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The gptj_ref under test: this checkout, or another tree (GPTJ_SCENARIO_CODE=/path) to compare before/after.
CODE = os.environ.get("GPTJ_SCENARIO_CODE", REPO)
TIME_LIMIT = 20
MEMORY_LIMIT = 4 << 30

# Code every API snippet starts with: the fixtures' paths and a helper that prints OK for a GPTJError.
PRELUDE = """
import os, sys, io, json, struct, zipfile, pickle, threading
import numpy as np
import gptj_ref, gptj_ref.checkpoint
from gptj_ref.errors import GPTJError
W = {work!r}
CK, Q8, BIN = W + "/ck", W + "/m.gptj", W + "/bin"
def refused(fn):
    try:
        fn()
    except GPTJError as e:
        print("OK", type(e).__name__, str(e)[:200].replace(chr(10), " "))
    else:
        print("NOT REFUSED")
def safetensors_bytes(header, data=b""):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data
def open_st(blob):
    p = W + "/t.safetensors"
    open(p, "wb").write(blob)
    from gptj_ref.safetensors_file import SafetensorsFile
    return SafetensorsFile(p)
def bin_with_pickle(pkl, name="bad", compress=zipfile.ZIP_STORED, extra=()):
    d = W + "/" + name
    os.makedirs(d, exist_ok=True)
    import shutil; shutil.copy(CK + "/config.json", d + "/config.json")
    with zipfile.ZipFile(d + "/pytorch_model.bin", "w") as z:
        z.writestr(zipfile.ZipInfo("archive/data.pkl"), pkl, compress_type=compress)
        for member, data in extra:
            z.writestr(zipfile.ZipInfo(member), data)
    return d
def shared_nest(depth):
    # pickle opcodes: a tuple of two references to the tuple below, `depth` levels deep (~10 bytes a level)
    out = b"\\x80\\x02" + b"K\\x01" + b"\\x94"
    for i in range(depth):
        out += b"h" + bytes([i]) + b"h" + bytes([i]) + b"\\x86\\x94"
    return out
GLOBAL = lambda m, n: b"c" + m.encode() + b"\\n" + n.encode() + b"\\n"
def native_with_meta(change, src=None):
    from gptj_ref.safetensors_file import SafetensorsFile
    src = src or Q8
    raw = open(src, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    change(header)
    blob = json.dumps(header).encode()
    blob += b" " * (-(8 + len(blob)) % 64)
    out = W + "/changed.gptj"
    open(out, "wb").write(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    return out
"""

SETUP = """
import os, json, shutil
import numpy as np
from gptj_ref.config import GPTJConfig
from gptj_ref.layout import random_weights
from gptj_ref.safetensors_file import save_tensors
from gptj_ref.convert import convert
W = {work!r}
cfg = GPTJConfig(vocab_size=50400, n_positions=128, n_embd=64, n_layer=2, n_head=4, rotary_dim=8)
os.makedirs(W + "/ck", exist_ok=True)
cfg.to_json_file(W + "/ck/config.json")
save_tensors(W + "/ck/model.safetensors", random_weights(cfg, seed=1))
convert(W + "/ck", W + "/m.gptj", dtype="q8", progress=False)
import torch
os.makedirs(W + "/bin", exist_ok=True)
cfg.to_json_file(W + "/bin/config.json")
torch.save({{k: torch.from_numpy(v) for k, v in random_weights(cfg, seed=1).items()}}, W + "/bin/pytorch_model.bin")
"""


class Scenario:
    def __init__(self, cls: str, name: str, kind: str, body: str):
        self.cls, self.name, self.kind, self.body = cls, name, kind, textwrap.dedent(body).strip()


S: List[Scenario] = []


def api(cls, name, body):
    S.append(Scenario(cls, name, "api", body))


def cli(cls, name, body):
    S.append(Scenario(cls, name, "cli", body))


# 1, 14: KV cache misuse -------------------------------------------------------------------------------
CACHE = "cache misuse"
MODELS = """
from gptj_ref.config import GPTJConfig
from gptj_ref.layout import random_weights
from gptj_ref.runtime import CppModel
def model(**kw):
    base = dict(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=8)
    c = GPTJConfig(**{**base, "bos_token_id": 99, "eos_token_id": 99, **kw})
    return CppModel(c, random_weights(c), threads=1)
ids = np.arange(5)
"""
# A cache made by one model handed to another: (name, the models, the call that must be refused).
for name, models, call in (
    (
        "wider deeper model, smaller model's cache",
        "big, small = model(n_embd=128, n_layer=4), model()",
        "big.forward(ids, small.new_cache(32))",
    ),
    (
        "smaller model, bigger model's cache",
        "big, small = model(n_embd=128, n_layer=4), model()",
        "small.forward(ids, big.new_cache(32))",
    ),
    ("same widths, more heads", "a, b = model(n_head=4), model(n_head=2)", "a.forward(ids, b.new_cache(32))"),
    (
        "cache with more slots than the rotary table",
        "short, long = model(n_positions=16), model(n_positions=64); cache = long.new_cache(64)",
        "[short.forward(np.arange(10), cache) for _ in range(5)]",
    ),
    (
        "float16 cache to a float32 model",
        'a = model(); b = CppModel(a.config, a.weight_views(), threads=1, kv_dtype="float16")',
        "a.forward(ids, b.new_cache(32))",
    ),
    (
        "reference cache to the cpp model",
        "from gptj_ref.reference import Reference; a = model(); r = Reference(a.config, a.weight_views())",
        "a.forward(ids, r.new_cache(32))",
    ),
):
    api(CACHE, name, MODELS + f"\n{models}\nrefused(lambda: {call})")
for batch, slots in (("10**7", 256), ("10**18", 256), ("2.5", 16)):
    api(
        CACHE,
        f"new_cache batch={batch}",
        f"""
m = gptj_ref.load(None, backend="cpp")
refused(lambda: m.backend.new_cache({slots}, batch={batch}))""",
    )
api(
    CACHE,
    "one cache, four threads",
    """
m = gptj_ref.load(None, backend="cpp", threads=1)
cache = m.backend.new_cache(256)   # the demo model's context
outcomes = []
def run():
    try:
        for _ in range(60):
            m.backend.forward(np.array([1]), cache)
        outcomes.append("done")
    except GPTJError as e:
        outcomes.append("refused")
    except Exception as e:
        outcomes.append(repr(e))
ts = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
lengths = {cache.length} | set(cache.row_lengths)
done = outcomes.count("done")
# every token that was accepted is in the cache, once: Python and C++ agree, nothing but refusals failed
ok = all(o in ("done", "refused") for o in outcomes) and len(lengths) == 1 and "refused" in outcomes
print("OK" if ok else f"CORRUPT {outcomes} lengths {lengths}")""",
)
api(
    CACHE,
    "memory limit: huge cache is a readable error",
    """
import resource
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
m = gptj_ref.load(None, backend="cpp", threads=1)
refused(lambda: m.backend.new_cache(2048, batch=4000))""",
)

# 2, 8, 15: pickles ---------------------------------------------------------------------------------------
PKL = "pickle"
api(
    PKL,
    "shared tuples 40 deep in a persistent id",
    """
pkl = shared_nest(40) + b"Q."
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(pkl)))""",
)
api(
    PKL,
    "shared tuples 40 deep as storage_offset",
    """
pid = (b"(X\\x07\\x00\\x00\\x00storage" + GLOBAL("torch", "FloatStorage")
       + b"X\\x01\\x00\\x00\\x000X\\x03\\x00\\x00\\x00cpuK\\x04tQ")
nest = shared_nest(40)[2:]
pkl = (b"\\x80\\x02}X\\x01\\x00\\x00\\x00a" + GLOBAL("torch._utils", "_rebuild_tensor_v2")
       + b"(" + pid + nest + b"K\\x04\\x85K\\x01\\x85\\x89NtR" + b"s.")
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(pkl)))""",
)
api(
    PKL,
    "shared tuples 40 deep as a dict key",
    """
pkl = b"\\x80\\x02}" + shared_nest(40)[2:] + b"K\\x01s."
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(pkl)))""",
)
api(
    PKL,
    "shared tuples 40 deep in a frozenset",
    """
pkl = b"\\x80\\x04\\x8f(" + shared_nest(40)[2:] + b"\\x91."
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(pkl)))""",
)
api(
    PKL,
    "shared tuples 20 deep, 4 wide, as a dict key (4**20 to hash)",
    """
level = b"K\\x01\\x940"                       # 1, memoized, popped
for i in range(20):                              # a tuple of 4 references to the one below, memoized, popped
    level += b"(" + (b"h" + bytes([i])) * 4 + b"t\\x940"
pkl = b"\\x80\\x02}" + level + b"h\\x14K\\x01s."
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(pkl)))""",
)
api(
    PKL,
    "100000 nested tuples as a dict key",
    """
pkl = b"\\x80\\x02}" + b"K\\x01" + b"\\x85" * 100000 + b"K\\x01s."
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(pkl)))""",
)
api(
    PKL,
    "BUILD on OrderedDict sets `items`",
    """
pkl = b"\\x80\\x02" + GLOBAL("collections", "OrderedDict") + b")R}X\\x05\\x00\\x00\\x00itemsK\\x01sb."
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(pkl)))""",
)
api(
    PKL,
    "os.system global",
    """
pkl = b"\\x80\\x02" + GLOBAL("os", "system") + b"X\\x04\\x00\\x00\\x00true\\x85R."
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(pkl)))""",
)
api(
    PKL,
    "not a pickle at all",
    """
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(b"hello world")))""",
)
cli(
    PKL,
    "shape (10**1000,) in gptj info",
    """
python3 -c '
import sys
exec(sys.stdin.read())' <<'EOF'
{prelude}
pid = (b"(X\\x07\\x00\\x00\\x00storage" + GLOBAL("torch", "FloatStorage")
       + b"X\\x01\\x00\\x00\\x000X\\x03\\x00\\x00\\x00cpuK\\x04tQ")
big = pickle.dumps(10**1000, protocol=2)[2:-1]
pkl = (b"\\x80\\x02}X\\x01\\x00\\x00\\x00a" + GLOBAL("torch._utils", "_rebuild_tensor_v2")
       + b"(" + pid + b"K\\x00" + big + b"\\x85K\\x01\\x85\\x89NtR" + b"s.")
bin_with_pickle(pkl, "huge_shape", extra=[("archive/data/0", b"\\x00" * 16)])
EOF
python3 -m gptj_ref.cli info {work}/huge_shape""",
)

# 3: zip records -------------------------------------------------------------------------------------------
ZIP = "zip records"
api(
    ZIP,
    "compressed data.pkl (200 MB inflated)",
    """
pkl = b"\\x80\\x02X" + struct.pack("<I", 200 << 20) + b"\\x00" * (200 << 20) + b"."
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(pkl, compress=zipfile.ZIP_DEFLATED)))""",
)
api(
    ZIP,
    "compressed tensor record",
    """
import torch
d = W + "/deflated"; os.makedirs(d, exist_ok=True)
import shutil; shutil.copy(CK + "/config.json", d)
src = zipfile.ZipFile(BIN + "/pytorch_model.bin")
with zipfile.ZipFile(d + "/pytorch_model.bin", "w", zipfile.ZIP_DEFLATED) as z:
    for n in src.namelist():
        z.writestr(n, src.read(n), compress_type=zipfile.ZIP_STORED if n.endswith("data.pkl") else zipfile.ZIP_DEFLATED)
refused(lambda: gptj_ref.load(d))""",
)
api(
    ZIP,
    "byteorder record of 1 GB (compressed)",
    """
refused(lambda: gptj_ref.checkpoint.open_checkpoint(bin_with_pickle(b"\\x80\\x02}.", "bo",
        extra=[("archive/byteorder", b"l" * (1 << 30))])))""",
)

# 4: sizes ------------------------------------------------------------------------------------------------
SIZE = "sizes before allocation"


def _meta(change):
    return f"""
def change(h):
    cfg = json.loads(h["__metadata__"]["config"]); {change}; h["__metadata__"]["config"] = json.dumps(cfg)
"""


api(
    SIZE,
    "native n_positions=1e9, load",
    _meta('cfg["n_positions"] = 10**9')
    + """
refused(lambda: gptj_ref.load(native_with_meta(change)).generate("hi", max_new_tokens=2))""",
)
api(
    SIZE,
    "native n_layer=1e6, load",
    _meta('cfg["n_layer"] = 10**6')
    + """
refused(lambda: gptj_ref.load(native_with_meta(change)))""",
)
cli(
    SIZE,
    "native n_layer=1e6, gptj info",
    """
python3 -c '
import sys
exec(sys.stdin.read())' <<'EOF'
{prelude}
def change(h):
    cfg = json.loads(h["__metadata__"]["config"]); cfg["n_layer"] = 10**6; h["__metadata__"]["config"] = json.dumps(cfg)
import shutil; shutil.copy(native_with_meta(change), W + "/deep.gptj")
EOF
python3 -m gptj_ref.cli info {work}/deep.gptj""",
)
cli(
    SIZE,
    "checkpoint config n_layer=1e6, gptj info",
    """
mkdir -p {work}/deepck && cp {work}/ck/model.safetensors {work}/deepck/ &&
python3 -c 'import json; c=json.load(open("{work}/ck/config.json")); c["n_layer"]=10**6
json.dump(c, open("{work}/deepck/config.json","w"))' &&
python3 -m gptj_ref.cli info {work}/deepck""",
)
api(
    SIZE,
    "reference new_cache on n_positions=1e6 config",
    """
from gptj_ref.config import GPTJConfig
refused(lambda: GPTJConfig(n_positions=10**9))""",
)

# 5: text ---------------------------------------------------------------------------------------------------
TEXT = "non-UTF-8 text"
cli(TEXT, "stdin \\xff\\xfe", """printf '\\xff\\xfe' | python3 -m gptj_ref.cli generate --model {work}/m.gptj -n 2""")
cli(TEXT, "argv \\xff", """python3 -m gptj_ref.cli generate --model {work}/m.gptj -n 2 $'\\xff'""")
api(
    TEXT,
    "generate('a\\ud800')",
    """
m = gptj_ref.load(Q8)
refused(lambda: m.generate("a\\ud800", max_new_tokens=2))""",
)
api(
    TEXT,
    "logits('\\udcff')",
    """
m = gptj_ref.load(Q8)
refused(lambda: m.logits("\\udcff"))""",
)

# 6, 7: converter -------------------------------------------------------------------------------------------
CONV = "converter"
api(
    CONV,
    "destination is the source's weights",
    """
import shutil; shutil.copytree(CK, W + "/ck2", dirs_exist_ok=True)
before = open(W + "/ck2/model.safetensors", "rb").read()
from gptj_ref.convert import convert
refused(lambda: convert(W + "/ck2", W + "/ck2/model.safetensors", progress=False))
assert open(W + "/ck2/model.safetensors", "rb").read() == before, "SOURCE DESTROYED" """,
)
api(
    CONV,
    "destination is the source's config.json",
    """
import shutil; shutil.copytree(CK, W + "/ck3", dirs_exist_ok=True)
from gptj_ref.convert import convert
refused(lambda: convert(W + "/ck3", W + "/ck3/config.json", progress=False))""",
)
cli(
    CONV,
    "unwritable destination directory",
    """
python3 -m gptj_ref.cli convert {work}/ck /proc/self/out.gptj --no-progress""",
)
cli(CONV, "destination ''", """python3 -m gptj_ref.cli convert {work}/ck '' --no-progress""")
cli(
    CONV,
    "destination 'newdir/'",
    """cd {work} && PYTHONPATH={code} python3 -m gptj_ref.cli convert {work}/ck newdir/ --no-progress""",
)
cli(
    CONV,
    "write fails (file size limit, as a full disk)",
    """
(ulimit -f 100; python3 -c '
import signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
sys.argv = ["gptj", "convert", "{work}/ck", "{work}/big.gptj", "--dtype", "f32", "--no-progress"]
from gptj_ref.cli import main
sys.exit(main())')""",
)
# A conversion of the fixture checkpoint (f32) in a child process, slowed to 0.3 s a tensor, signalled 3 s
# in: in the middle of writing.
SLOW_CONVERT = '''
import subprocess, time, signal, glob
SLOW_CHILD = """
import time
import gptj_ref.convert as c
write = c.write_native
def slow(*a, **k):
    progress = k.get("progress")
    def each_tensor(name, nb):
        time.sleep(0.3)
        progress and progress(name, nb)
    k["progress"] = each_tensor
    return write(*a, **k)
c.write_native = slow
c.convert(CK, OUT, dtype="f32", progress=False)
"""
def signal_mid_convert(out, signum):
    os.makedirs(os.path.dirname(out), exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", f"CK, OUT = {CK!r}, {out!r}" + SLOW_CHILD])
    time.sleep(3)
    p.send_signal(signum); p.wait()
'''
api(
    CONV,
    "SIGTERM mid-convert leaves no temp file",
    SLOW_CONVERT
    + """
signal_mid_convert(W + "/term/out.gptj", signal.SIGTERM)
left = glob.glob(W + "/term/.tmp-*") + glob.glob(W + "/term/out.gptj")
print("OK" if not left else f"LEFT {left}")""",
)
api(
    CONV,
    "leftover temp from kill -9 removed by the next convert",
    SLOW_CONVERT
    + """
signal_mid_convert(W + "/kill/out.gptj", signal.SIGKILL)
had = glob.glob(W + "/kill/.tmp-*")
from gptj_ref.convert import convert
convert(CK, W + "/kill/out.gptj", dtype="q8", progress=False)
left = glob.glob(W + "/kill/.tmp-*")
print("OK" if had and not left else f"LEFT {left} (had {had})")""",
)
api(
    CONV,
    "source truncated mid-convert",
    """
import shutil; shutil.copytree(CK, W + "/trunc", dirs_exist_ok=True)
import gptj_ref.convert as c
src = W + "/trunc/model.safetensors"
w = c.write_native
def truncating(*a, **k):
    p = k.get("progress")
    def pr(name, nb):
        os.truncate(src, 4096)
        p and p(name, nb)
    k["progress"] = pr
    return w(*a, **k)
c.write_native = truncating
refused(lambda: c.convert(W + "/trunc", W + "/trunc.gptj", dtype="f32", progress=False))""",
)

# 9: safetensors headers ------------------------------------------------------------------------------------
ST = "safetensors header"
api(ST, "JSON nested 100k deep", """refused(lambda: open_st(safetensors_bytes(b"[" * 100000 + b"]" * 100000)))""")
api(ST, "integer of 5000 digits", """refused(lambda: open_st(safetensors_bytes(b'{"a": ' + b"9" * 5000 + b"}")))""")
api(
    ST,
    "dtype [F32] as a list",
    """
header = {"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}
refused(lambda: open_st(safetensors_bytes(header, b"0000")))""",
)
api(
    ST,
    "dimension 2**70",
    """
header = {"a": {"dtype": "F32", "shape": [2**70], "data_offsets": [0, 4]}}
refused(lambda: open_st(safetensors_bytes(header, b"0000")))""",
)
api(
    ST,
    "shape [4, 2**62+1] over 16 bytes",
    """
header = {"a": {"dtype": "F32", "shape": [4, 2**62 + 1], "data_offsets": [0, 16]}}
refused(lambda: open_st(safetensors_bytes(header, b"0" * 16)))""",
)
api(
    ST,
    "data_offsets of floats",
    """
header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4.0]}}
refused(lambda: open_st(safetensors_bytes(header, b"0000")))""",
)
api(ST, "metadata not strings", """refused(lambda: open_st(safetensors_bytes({"__metadata__": {"a": [1]}})))""")
api(ST, "header length past the end", """refused(lambda: open_st(struct.pack("<Q", 1 << 40) + b"{}"))""")
api(ST, "NaN literal in header", """refused(lambda: open_st(safetensors_bytes(b'{"a": NaN}')))""")

# 10: non-finite weights --------------------------------------------------------------------------------------
NAN = "non-finite weights"
api(
    NAN,
    "q8 file with NaN in ln_f.weight",
    """
from gptj_ref.safetensors_file import SafetensorsFile
f = SafetensorsFile(Q8); e = f.entries["transformer.ln_f.weight"]
raw = bytearray(open(Q8, "rb").read()); raw[e.offset:e.offset + 4] = struct.pack("<f", float("nan"))
open(W + "/nan.gptj", "wb").write(raw)
refused(lambda: gptj_ref.load(W + "/nan.gptj").generate("hi", max_new_tokens=2))""",
)
api(
    NAN,
    "checkpoint with inf in a weight matrix, convert",
    """
import shutil; shutil.copytree(CK, W + "/infck", dirs_exist_ok=True)
from gptj_ref.safetensors_file import SafetensorsFile
f = SafetensorsFile(W + "/infck/model.safetensors"); e = f.entries["transformer.h.0.attn.q_proj.weight"]
raw = bytearray(open(W + "/infck/model.safetensors", "rb").read())
raw[e.offset + 40:e.offset + 44] = struct.pack("<f", float("inf"))
open(W + "/infck/model.safetensors", "wb").write(raw)
from gptj_ref.convert import convert
refused(lambda: convert(W + "/infck", W + "/inf.gptj", dtype="q8", progress=False))""",
)
api(
    NAN,
    "checkpoint with NaN in a bias, load",
    """
import shutil; shutil.copytree(CK, W + "/nanck", dirs_exist_ok=True)
from gptj_ref.safetensors_file import SafetensorsFile
f = SafetensorsFile(W + "/nanck/model.safetensors"); e = f.entries["transformer.h.1.mlp.fc_in.bias"]
raw = bytearray(open(W + "/nanck/model.safetensors", "rb").read())
raw[e.offset:e.offset + 4] = struct.pack("<f", float("nan"))
open(W + "/nanck/model.safetensors", "wb").write(raw)
refused(lambda: gptj_ref.load(W + "/nanck"))""",
)

# 12: token-id prompts -------------------------------------------------------------------------------------------
IDS = "token-id prompts"
for expr in (
    "m.generate_ids(['abc'])",
    "m.generate_ids([None])",
    "m.generate_ids([float('nan')])",
    "m.generate(b'The dog')",
    "m.logits(b'The dog')",
    "m.generate_ids(b'hi')",
    "m.generate_ids([1.7])",
    "m.generate_ids([True])",
    "m.generate_ids(np.array([1.0, 2.0]))",
    "m.generate([None])",
    "m.generate_ids(5)",
):
    api(
        IDS,
        expr,
        f"""
m = gptj_ref.load(None)
refused(lambda: {expr})""",
    )

# 13: files in a model directory -----------------------------------------------------------------------------------
FILES = "files in a directory"
cli(
    FILES,
    "config.json is a directory",
    """
mkdir -p {work}/cfgdir/config.json && cp {work}/ck/model.safetensors {work}/cfgdir/ &&
python3 -m gptj_ref.cli info {work}/cfgdir""",
)
cli(
    FILES,
    "config.json is a FIFO (info)",
    """
mkdir -p {work}/fifo1 && cp {work}/ck/model.safetensors {work}/fifo1/ &&
rm -f {work}/fifo1/config.json && mkfifo {work}/fifo1/config.json &&
python3 -m gptj_ref.cli info {work}/fifo1""",
)
cli(
    FILES,
    "tokenizer.json is a FIFO (generate)",
    """
mkdir -p {work}/fifo2 && cp {work}/ck/* {work}/fifo2/ &&
rm -f {work}/fifo2/tokenizer.json && mkfifo {work}/fifo2/tokenizer.json &&
python3 -m gptj_ref.cli generate --model {work}/fifo2 -n 2 hi""",
)
cli(
    FILES,
    "model path is a FIFO",
    """
rm -f {work}/fifo.gptj && mkfifo {work}/fifo.gptj && python3 -m gptj_ref.cli info {work}/fifo.gptj""",
)
cli(
    FILES,
    "vocab.json is a directory",
    """
mkdir -p {work}/vocdir/vocab.json && cp {work}/ck/* {work}/vocdir/ 2>/dev/null
touch {work}/vocdir/merges.txt && python3 -m gptj_ref.cli generate --model {work}/vocdir -n 2 hi""",
)
cli(
    FILES,
    "config.json not JSON",
    """
mkdir -p {work}/badcfg && cp {work}/ck/model.safetensors {work}/badcfg/ &&
printf '\\xff{{' > {work}/badcfg/config.json && python3 -m gptj_ref.cli info {work}/badcfg""",
)

# 14: output ----------------------------------------------------------------------------------------------------
OUT = "output"
cli(OUT, "generate > /dev/full", """python3 -m gptj_ref.cli generate -n 2 hi > /dev/full""")
cli(OUT, "info > /dev/full", """python3 -m gptj_ref.cli info > /dev/full""")

# Entry points of the server, eval and batch, and the demo's format version 2 ------------------------------
ROWS = "rows, eval, batch"
for call in (
    "big.forward_rows([[1], [2]], c)",
    "big.reset_row(c, 0)",
    "big.copy_row(c, 0, 1, 0)",
    "small.reset_row(small.new_cache(8, batch=2), 5)",
    "small.copy_row(small.new_cache(8, batch=2), 0, 1, 3)",
):
    api(
        ROWS,
        call,
        MODELS
        + f"""
big, small = model(n_embd=128, n_layer=4), model()
c = small.new_cache(8, batch=2)
refused(lambda: {call})""",
    )
cli(
    ROWS,
    "eval perplexity of a non-UTF-8 file",
    """
printf 'The dog \\xff ran' > {work}/raw.txt && python3 -m gptj_ref.cli eval perplexity {work}/raw.txt""",
)
cli(
    ROWS,
    "eval lambada with a lone surrogate",
    """
printf '{"text": "The \\\\ud800 dog"}\\n' > {work}/lone.jsonl &&
python3 -m gptj_ref.cli eval lambada {work}/lone.jsonl""",
)
api(
    ROWS,
    "batch line with a lone surrogate is an error record",
    """
from gptj_ref.cli import main
open(W + "/in.jsonl", "w").write('{"id": 1, "prompt": "a \\\\ud800"}\\n'
                                 '{"id": 2, "prompt": "\\u00ff", "max_tokens": 1}\\n')
assert main(["batch", W + "/in.jsonl", W + "/out.jsonl"]) in (0, 1)
assert "U+D800" in open(W + "/out.errors.jsonl").read()
print("OK")""",
)
for version in ("9" * 5000, "0", "3"):
    api(
        ROWS,
        f"demo file with format_version {version[:8]}",
        f"""
import json
from gptj_ref.demo import DEMO_PATH
from gptj_ref.native import open_native
data = open(DEMO_PATH, "rb").read(); n = int.from_bytes(data[:8], "little"); h = json.loads(data[8:8 + n])
h["__metadata__"]["format_version"] = "{version}"
t = json.dumps(h).encode(); t += b" " * (-len(t) % 8)
open(W + "/v.gptj", "wb").write(len(t).to_bytes(8, "little") + t + data[8 + n:])
refused(lambda: open_native(W + "/v.gptj"))""",
    )


def limit():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.setsid()


def run(s: Scenario, work: str) -> Tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": CODE, "OMP_NUM_THREADS": "1"}
    if s.kind == "api":
        cmd = [sys.executable, "-c", PRELUDE.format(work=work) + "\n" + s.body]
    else:
        body = s.body.replace("{prelude}", PRELUDE.format(work=work)).replace("{work}", work).replace("{code}", CODE)
        cmd = ["bash", "-c", body]
    try:
        p = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIME_LIMIT,
            env=env,
            cwd=work,  # not the checkout: gptj_ref must come from CODE
            preexec_fn=limit,
        )
    except subprocess.TimeoutExpired:
        return False, f"hang (> {TIME_LIMIT} s)"
    out = (p.stdout.strip() + "\n" + p.stderr.strip()).strip()
    last = out.splitlines()[-1] if out else ""
    if p.returncode < 0:
        return False, f"killed by signal {-p.returncode}: {last}"
    if s.kind == "api":
        lines = p.stdout.strip().splitlines()
        ok = p.returncode == 0 and bool(lines) and lines[-1].startswith("OK")
        return ok, (lines[-1] if ok else last)[:160]
    err = [line for line in p.stderr.strip().splitlines() if line.strip()]
    ok = p.returncode == 2 and len(err) >= 1 and err[-1].startswith("gptj") and not any("Traceback" in e for e in err)
    return ok, f"exit {p.returncode}: {last}"[:160]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default="", help="run only scenarios whose class or name contains this")
    parser.add_argument("-v", action="store_true", help="print every scenario, not only failures")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="gptj-scenarios-")
    try:
        subprocess.run(
            [sys.executable, "-c", SETUP.format(work=work)],
            check=True,
            cwd=work,
            env={**os.environ, "PYTHONPATH": CODE},
        )
        table = {}
        for s in S:
            if args.k and args.k not in s.cls and args.k not in s.name:
                continue
            ok, detail = run(s, work)
            table.setdefault(s.cls, []).append(ok)
            if args.v or not ok:
                print(f"{'clean ' if ok else 'FAIL  '} [{s.cls}] {s.name}: {detail}", flush=True)
        print(f"\n{'class':28} clean / tried")
        for cls, oks in table.items():
            print(f"{cls:28} {sum(oks):5} / {len(oks)}")
        total = [ok for oks in table.values() for ok in oks]
        print(f"{'all':28} {sum(total):5} / {len(total)}")
        return 0 if all(total) else 1
    finally:
        subprocess.run(["chmod", "-R", "u+w", work])
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
