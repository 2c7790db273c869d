"""`help(name)` is enough at a REPL: every module's last exported cell calls `core.document_arguments(__name__)`, which
appends the docments comments of a public function's or class's arguments to its docstring. The notebooks stay the one
source of those descriptions (this test reads them back with fastcore's docments), and the API reference, which has
its own argument tables, does not repeat them."""
import importlib
import pydoc
import re
import sys
from pathlib import Path

import pytest
from fastcore.docments import docments

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import api_reference as ar  # noqa: E402

NAMES = [("sde", "VPSDE"), ("sde", "VESDE"), ("sampling", "sample"), ("sampling", "ode_sample"), ("losses", "dsm_loss"),
         ("likelihood", "log_likelihood"), ("toy", "ring_of_gaussians"), ("core", "check_real"), ("models", "ScoreMLP")]


def _help_text(obj) -> str:
    "What `help(obj)` prints."
    return pydoc.render_doc(obj, renderer=pydoc.plaintext)


@pytest.mark.parametrize("module,name", NAMES)
def test_help_shows_every_argument_comment(module, name):
    obj = getattr(importlib.import_module(f"sde_diffusion.{module}"), name)
    target = obj.__init__ if isinstance(obj, type) else obj
    comments = {k: v["docment"] for k, v in docments(target, full=True).items()
                if k not in ("self", "return") and v["docment"]}
    assert comments, f"{module}.{name} has no argument comments to show"
    text = re.sub(r"\s+", " ", _help_text(obj))        # help() may re-wrap and indent: compare words
    for arg, comment in comments.items():
        assert re.sub(r"\s+", " ", f"{arg}: {comment}") in text, f"help({name}) does not show `{arg}`: {comment}"


def test_a_class_no_longer_says_only_initialize_self():
    from sde_diffusion.sde import VPSDE
    assert "beta_min:" in VPSDE.__doc__ and "Arguments:" in VPSDE.__doc__


def test_every_module_documents_its_arguments():
    "Each module with public names ends with the call (else its help() lacks the arguments)."
    missing = []
    for module in ar.module_names():
        mod = importlib.import_module(module)
        if getattr(mod, "__all__", None) and "document_arguments(__name__)" not in Path(mod.__file__).read_text():
            missing.append(module)
    assert not missing, f"modules whose last exported cell does not call document_arguments(__name__): {missing}"


def test_the_api_reference_shows_the_arguments_once():
    "book/api.md has argument tables; the Arguments sections that help() shows are not repeated in the prose."
    text = (ROOT / "book/api.md").read_text(encoding="utf-8")
    assert "Arguments:" not in text and not re.search(r"^Returns: ", text, flags=re.M)
