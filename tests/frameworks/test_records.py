"""The typed records: summary.json and result.json of the shared mirrored compare read back into the records they
were written from (the pairing from the registry: tests/unit/test_record_types.py)."""

import json
from pathlib import Path

from xfw.common.records import Comparison, Summary, read_result


def test_summary_and_results_read_back_into_their_records(mirrored):
    _, summary, out = mirrored
    typed = Summary.model_validate(summary)
    assert typed.to_json() == json.loads(json.dumps(summary))  # nothing lost or added on the way back
    assert all(isinstance(c, Comparison) for c in typed.comparisons)
    for run in typed.runs:
        for path in getattr(run, "result_files", []):
            result = read_result(json.loads(Path(path).read_text()))
            assert result.loss == run.loss and result.id == run.id
