"""What encryption and signing cost a user (issue #19): saving a model encrypted and signed against saving it plain,
loading it decrypted and verified against a plain load, and the peak memory of ``lmforge secure encrypt`` /
``decrypt`` on a 2 GB file, in one run.

Cases (a random model: speed does not depend on training), each with three contenders: ``plain`` (lmforge's
plain save and load), ``signed`` (a ``Seal`` with a signing key only: the files as plain, signed) and
``encrypted+signed`` (``Seal((x25519 public key,), signing_key)``: every file encrypted from memory, signed from the
digests taken while writing):

- ``small checkpoint``: a training checkpoint of the ``small`` model (vocab 16384) with its AdamW state
  (``formats.save_checkpoint``: model, optimizer and state files, the integrity manifest). Loads: ``load_model``
  with no access, with ``gate_for(None, verify_with)`` (signature verified) and with ``gate_for(key,
  verify_with)`` (signature verified over every file, then decrypted straight into the model's weights).
- ``big``: a model of about ``--export-gb`` GB of fp32 weights (the ``1b`` shape with as many blocks as fit), as a
  checkpoint folder without optimizer state, and as one ``lmforge export`` file (``write_exported``; a plain
  export has no manifest, so its plain load hashes nothing); the same loads. Every load is checked to give the
  saved weights.

Each save and load is timed ``--runs`` times, the contenders interleaved, medians and ratios of medians to plain; a
save includes the fsync of its files (what makes it durable); the files are in the page cache for the loads.
Memory: the big export's plain and encrypted+signed loads, and ``lmforge secure encrypt`` and ``decrypt`` of a
``--file-gb`` GB file, each in a fresh process, peak resident set (``VmHWM``: the pages of a mapped file count) less
the process's resident set just before the command (imports done). The component speeds (AES-256-GCM over 1 MiB segments and SHA-256 on one core) are printed for context.

    python bench/secure_speed.py [--runs 5] [--export-gb 2] [--file-gb 2] [--json bench/out/secure_speed.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from train_throughput import busy_cpu_seconds  # noqa: E402

from lmforge.checkpoint.export import write_exported  # noqa: E402
from lmforge.checkpoint.formats import save_checkpoint  # noqa: E402
from lmforge.checkpoint.load import load_model  # noqa: E402
from lmforge.model.config import SIZES, ModelDims  # noqa: E402
from lmforge.model.decoder import Decoder  # noqa: E402
from lmforge.model.fused_layout import model_views  # noqa: E402
from lmforge.secure.gate import gate_for  # noqa: E402
from lmforge.secure.keys import keygen, load_public  # noqa: E402
from lmforge.secure.seal import Seal  # noqa: E402

GB = 1e9


def status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS: now; VmHWM: its peak). Not ru_maxrss: a
    child's starts at its parent's resident set at the fork, and the parent here holds the 2 GB model."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


# ------------------------------------------------------------------------------------------ memory worker
def memory_worker(args) -> None:
    """One ``lmforge secure`` command in this fresh process; prints the peak growth over the resident set just
    before it."""
    from lmforge.cli import main

    before = status_bytes("VmRSS")
    if args[0] == "load":  # load FILE [KEY PUBLIC_KEY]: load_model, plain or through the gate
        access = gate_for(Path(args[2]), Path(args[3])) if len(args) > 2 else None
        loaded = load_model(Path(args[1]), access=access)
        weights = sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values())
        peak = status_bytes("VmHWM")
        print(json.dumps({"before": before, "peak": peak, "added": peak - before, "weights": weights}))
        return
    try:
        main(["secure", *args, "--quiet"])
    except SystemExit as exc:
        if exc.code:
            raise
    peak = status_bytes("VmHWM")  # also counts the imports' own peak, if above: an upper bound of what was added
    print(json.dumps({"before": before, "peak": peak, "added": peak - before}))


def measure_memory(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-worker", *argv], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ timing
def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, runs: int, contenders: dict, before=None) -> dict:
    """Each of ``contenders`` (label -> function; the first is the reference) timed ``runs`` times, interleaved;
    ``before(label)`` runs untimed before each."""
    times = {label: [] for label in contenders}
    busy0, wall0 = busy_cpu_seconds(), time.perf_counter()
    for _ in range(runs):
        for label, fn in contenders.items():
            if before is not None:
                before(label)
            times[label].append(timed(fn))
    busy = None if busy0 is None else (busy_cpu_seconds() - busy0) / (time.perf_counter() - wall0)
    med = {k: statistics.median(v) for k, v in times.items()}
    reference = next(iter(contenders))
    row = {"case": name, "median_s": med, "ratio": {k: v / med[reference] for k, v in med.items()}, "runs": times,
           "cores_busy": busy}
    print(f"  {name}: " + ", ".join(f"{k} {v:.3f} s ({row['ratio'][k]:.3f}x)" for k, v in med.items())
          + f"   (cores busy {busy:.2f} of {os.cpu_count()})", flush=True)
    return row


def random_decoder(dims: ModelDims) -> Decoder:
    torch.manual_seed(0)
    with torch.no_grad():
        return Decoder(dims)


def export_dims(target_gb: float) -> ModelDims:
    """The ``1b`` shape at vocab 32000 with as many layers as make about ``target_gb`` GB of fp32 weights."""
    base = ModelDims(vocab_size=32000, **dict(SIZES["1b"], n_layers=1))
    one = sum(p.numel() for p in Decoder(base).parameters())
    two = sum(p.numel() for p in Decoder(ModelDims(vocab_size=32000, **dict(SIZES["1b"], n_layers=2))).parameters())
    per_layer, rest = two - one, one - (two - one)
    layers = max(1, round((target_gb * GB / 4 - rest) / per_layer))
    return ModelDims(vocab_size=32000, **dict(SIZES["1b"], n_layers=layers))


def component_speeds(gib: int = 1) -> dict:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    data = os.urandom(1 << 20)
    aead, nonce = AESGCM(os.urandom(32)), os.urandom(12)
    segments = gib * 1024
    def seal_all():  # each ciphertext dropped at once, as a save writes it: keeping them all would time the
        for _ in range(segments):  # first touch of 1 GiB of fresh memory instead of AES
            aead.encrypt(nonce, data, None)

    aes = timed(seal_all)
    big = data * 256
    sha = timed(lambda: [hashlib.sha256(big).digest() for _ in range(gib * 4)])
    return {"aes_gcm_gib_s": gib / aes, "sha256_gib_s": gib / sha}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--export-gb", type=float, default=2.0, help="size of the exported file (0: skip)")
    parser.add_argument("--file-gb", type=float, default=2.0, help="size of the file for the memory measurement")
    parser.add_argument("--tmp", type=Path, default=None, help="folder for the files (default: a temporary one)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker is not None:
        return memory_worker(args.memory_worker)

    root = Path(tempfile.mkdtemp(prefix="secure_speed.", dir=args.tmp))
    try:
        results = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


def run(args, root: Path) -> dict:
    enc_private, enc_public = keygen(root / "enc", "x25519")
    sign_private, sign_public = keygen(root / "sign", "ec-p256")
    seal = Seal((load_public(enc_public),), sign_private)
    signed_only = Seal(signing_key=sign_private)
    gate = lambda: gate_for(enc_private, sign_public)  # noqa: E731  a fresh gate per load: nothing cached
    speeds = component_speeds()
    print(f"components, one core: AES-256-GCM {speeds['aes_gcm_gib_s']:.1f} GiB/s (1 MiB segments), "
          f"SHA-256 {speeds['sha256_gib_s']:.2f} GiB/s", flush=True)
    rows = []

    seals = {"plain": None, "signed": signed_only, "encrypted+signed": seal}
    access = {"plain": lambda: None, "signed": lambda: gate_for(None, sign_public), "encrypted+signed": gate}

    def checkpoint_case(name: str, model, optimizer, dims: ModelDims) -> None:
        state = {"step": 1, "resume_key": {"model": dims.to_dict(), "seq_len": 64}}
        dirs = {k: root / f"{name}_{k}" for k in seals}
        rows.append(compare(f"{name} save (save_checkpoint)", args.runs,
                            {k: (lambda k=k: save_checkpoint(dirs[k], model, optimizer, state, seal=seals[k]))
                             for k in dirs}, before=lambda k: shutil.rmtree(dirs[k], ignore_errors=True)))
        rows[-1]["bytes"] = sum(f.stat().st_size for f in dirs["plain"].rglob("*") if f.is_file())
        print(f"  {rows[-1]['bytes'] / GB:.2f} GB", flush=True)
        rows.append(compare(f"{name} load (load_model)", args.runs,
                            {k: (lambda k=k: load_model(dirs[k], access=access[k]())) for k in dirs}))
        reference = model.state_dict()
        for k in dirs:
            loaded = load_model(dirs[k], access=access[k]()).model.state_dict()
            assert all(torch.equal(loaded[n], reference[n]) for n in reference), f"{name} {k}: other weights"
            shutil.rmtree(dirs[k])

    # the small model's training checkpoint, with its AdamW state
    dims = ModelDims(vocab_size=16384, **SIZES["small"])
    model = random_decoder(dims)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.zeros(1, 8, dtype=torch.long)).sum().backward()
    optimizer.step()
    print(f"small checkpoint ({sum(p.numel() for p in model.parameters()):,} parameters with AdamW state):",
          flush=True)
    checkpoint_case("small", model, optimizer, dims)
    del model, optimizer

    if args.export_gb > 0:
        dims = export_dims(args.export_gb)
        model = random_decoder(dims)
        print(f"a model of {sum(p.numel() for p in model.parameters()):,} parameters ({dims.n_layers} blocks of the "
              "1b shape), as a checkpoint (no optimizer state) and as an export file:", flush=True)
        checkpoint_case("big", model, None, dims)
        weights = {k: v.detach().contiguous() for k, v in model_views(model, dims).items()}
        files = {k: root / f"{k}.safetensors" for k in seals}

        def clear(label):
            for f in (files[label], files[label].with_name(files[label].name + ".sig")):
                f.unlink(missing_ok=True)

        rows.append(compare("big export save (write_exported)", args.runs,
                            {k: (lambda k=k: write_exported(files[k], weights, dims.to_dict(), 0, 64, "bench", None,
                                                            seals[k])) for k in files}, before=clear))
        rows[-1]["bytes"] = files["plain"].stat().st_size
        print(f"  {files['plain'].stat().st_size / GB:.2f} GB", flush=True)
        rows.append(compare("big export load (load_model)", args.runs,
                            {k: (lambda k=k: load_model(files[k], access=access[k]())) for k in files}))
        # peak memory of a load, each in a fresh process: what the encrypted one adds to the plain one's
        load_memory = {"plain": measure_memory(["load", str(files["plain"])]),
                       "encrypted+signed": measure_memory(["load", str(files["encrypted+signed"]), str(enc_private),
                                                           str(sign_public)])}
        extra = load_memory["encrypted+signed"]["added"] - load_memory["plain"]["added"]
        print(f"  export load, peak memory added: plain {load_memory['plain']['added'] / 2**20:,.0f} MiB, "
              f"encrypted+signed {load_memory['encrypted+signed']['added'] / 2**20:,.0f} MiB "
              f"({extra / 2**20:+,.1f} MiB)", flush=True)
        rows[-1]["peak_memory"] = load_memory
        for label in files:
            clear(label)
        del model, weights

    # peak memory of the secure commands on a big file, each in a fresh process
    big, sealed_big, back = root / "big.bin", root / "big.enc", root / "big.out"
    with open(big, "wb") as f:
        for _ in range(int(args.file_gb * GB) // (1 << 24)):
            f.write(os.urandom(1 << 24))
    memory = {"file_bytes": big.stat().st_size,
              "encrypt": measure_memory(["encrypt", str(big), "--recipient", str(enc_public), "--output",
                                         str(sealed_big)]),
              "decrypt": measure_memory(["decrypt", str(sealed_big), "--key", str(enc_private), "--output",
                                         str(back)])}
    with open(big, "rb") as a, open(back, "rb") as b:
        chunks = lambda f: iter(lambda: f.read(1 << 24), b"")  # noqa: E731
        identical = big.stat().st_size == back.stat().st_size and all(x == y for x, y in zip(chunks(a), chunks(b)))
    print(f"{big.stat().st_size / GB:.2f} GB file, peak memory added: encrypt "
          f"{memory['encrypt']['added'] / 2**20:.1f} MiB, decrypt {memory['decrypt']['added'] / 2**20:.1f} MiB "
          f"(decrypted file identical: {identical})", flush=True)
    return {"components": speeds, "rows": rows, "memory": memory, "identical_after_round_trip": identical}


if __name__ == "__main__":
    main()
