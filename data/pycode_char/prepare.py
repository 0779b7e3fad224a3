"""Python source code at the character level: data/pycode/prepare.py with --tokenizer char, written here.

    python data/pycode_char/prepare.py [--out_dir DIR] [--source DIR]

The standard library of the running interpreter (without test suites), split by file, one id per character
(about 220 distinct characters; 11.0M train and 1.1M val characters from Python 3.11.7's). See data/pycode for the
corpus, the split and the provenance that meta.json records.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run as a script, only data/<name> is on the path
from data.pycode.prepare import main as prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--tokenizer" or a.startswith("--tokenizer=") for a in args):
        print("error: pycode_char is always --tokenizer char (GPT-2 BPE: data/pycode/prepare.py)", file=sys.stderr)
        return 2
    if not any(a == "--out_dir" or a.startswith("--out_dir=") for a in args):
        args += ["--out_dir", str(HERE)]
    return prepare([*args, "--tokenizer", "char"])


if __name__ == "__main__":
    sys.exit(main())
