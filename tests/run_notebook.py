"""Runs a notebook top to bottom, as the test suite does: in a fresh kernel started in
notebooks/ (as Jupyter starts one), with the given parameters set in a cell after the one
tagged `parameters` (papermill's convention). Any error in a cell fails the run.

  python tests/run_notebook.py NAME '{"WORKDIR": "/tmp/w"}' OUT.ipynb
"""
import json
import os
import sys

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "notebooks")


def execute(name: str, parameters: dict, timeout: int = 300) -> nbformat.NotebookNode:
    """notebooks/<name>.ipynb executed with `parameters`; raises CellExecutionError on an
    error, with the failing cell and its traceback."""
    book = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
    index = next(i for i, cell in enumerate(book.cells)
                 if "parameters" in cell.metadata.get("tags", []))
    book.cells.insert(index + 1, nbformat.v4.new_code_cell(
        "\n".join(f"{key} = {value!r}" for key, value in parameters.items())))
    NotebookClient(book, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": NOTEBOOKS}}).execute()
    return book


def outputs(book: nbformat.NotebookNode) -> tuple[str, int]:
    """The notebook's printed text, and how many PNG images it displayed."""
    text, images = [], 0
    for cell in book.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
            images += "image/png" in out.get("data", {})
    return "\n".join(text), images


if __name__ == "__main__":
    name, parameters, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    nbformat.write(execute(name, parameters), out)
