"""One preflight before any export, comparison or inference: bad input is exit 2, nothing written.

``pillsnap compare``, ``pillsnap release`` (and so ``scripts/export_onnx.sh``, through
``pillsnap release preflight``) and ``pillsnap infer`` call ``run_preflight`` first.
It checks everything the run will read or write, collects every problem and raises
one ``PreflightError`` (a ``UserInputError``: exit 2) listing them:

* checkpoints: load weights-only (never running code from the file) into the
  configured architecture with the configured number of classes;
* the class map: exists, valid (9 ASCII-digit, unique edi_codes), as many classes as
  the classifier, the same digest as the one the checkpoint or ONNX file recorded;
* ONNX files given: parse, external data inside their folder, the inputs and outputs
  of their task, metadata that agrees with the config;
* data folders: exist and hold readable images (under the pixel limit);
* the output folder / file: can be written, is not a release record or ``latest``,
  and is not one of the inputs.

It lives in its own area because the release (which runs no model) must call it:
it may import the ground floor, data, models and engines; equivalence, release and
the command lines may import it.
"""

from pillsnap.names import is_release_record, record_of
from pillsnap.preflight.onnx import check_metadata, check_onnx_file
from pillsnap.preflight.outputs import check_output_dir, check_output_file
from pillsnap.preflight.run import PreflightError, PreflightReport, run_preflight

__all__ = [
    "PreflightError",
    "PreflightReport",
    "check_metadata",
    "check_onnx_file",
    "check_output_dir",
    "check_output_file",
    "is_release_record",
    "record_of",
    "run_preflight",
]
