"""``python -m simwnw_hf.visualize``: draw SimWnW block matches of one image's two views (see
:mod:`simwnw_hf.simwnw.visualize`)."""
from simwnw_hf.simwnw.visualize import cli, main  # noqa: F401

if __name__ == "__main__":
    cli()
