from _report_example import example_report

from pillsnap.report import tables


def _report():
    report = example_report()
    report["models"]["classification"]["compare"]["gates"] = [
        {
            "name": "classification.mse_mean",
            "value": 3e-13,
            "limit": 1e-4,
            "op": "<=",
            "passed": True,
            "strict_limit": 1e-6,
            "strict_passed": True,
            "would_pass_at": None,
        },
    ]
    report["models"]["detection"]["compare"]["gates"] = [
        {
            "name": "detection.delta_map50",
            "value": -0.0004,
            "limit": 0.01,
            "op": "|<=|",
            "passed": True,
            "strict_limit": None,
            "strict_passed": None,
            "would_pass_at": None,
        },
    ]
    report["models"]["detection"]["compare"]["metrics"] = {
        "photos": 8.0,
        "map50_torch": 0.98765,
        "map50_onnx": 0.98725,
        "delta_map50": -0.0004,
        "map50_95_torch": 0.8,
        "map50_95_onnx": 0.8,
        "delta_map50_95": -0.0000001,
    }
    report["end_to_end"] = {
        "compared": True,
        "photos": 8,
        "pills": 20,
        "pill_agreement": 1.0,
        "failed": False,
    }
    report["config"] = {"compare": {"gates": {"e2e_agreement_min": 0.99}}}
    return report


def test_gates_table_includes_end_to_end():
    table = tables.gates_table(_report())
    assert list(table["metric"]) == [
        "detection.delta_map50",
        "classification.mse_mean",
        "end_to_end.pill_agreement",
    ]
    assert table["pass"].all() and table.loc[2, "limit"] == 0.99


def test_release_summary_is_rounded_and_stable():
    text = tables.release_summary(_report())
    assert text.splitlines()[0] == "verdict: passed"
    assert (
        "mAP50 torch 0.988 onnx 0.987, delta 0.000" in text
    )  # -0.0004 rounds to 0.000, never -0.000
    assert "top-1 match 1.000, mse_mean below 1e-6: True" in text
    assert "end-to-end: 20 pills, edi_code agreement 1.000" in text
    failed = _report()
    failed["failed"] = True
    failed["models"]["classification"]["compare"]["gates"][0]["passed"] = False
    assert tables.release_summary(failed) != text and "FAIL" in tables.release_summary(failed)


def test_divergence_table_names_first_and_worst_layers():
    from _report_example import divergence_section

    report = example_report()
    assert tables.divergence_table(report).empty  # not localised: no rows
    report["divergence"] = {"detection": divergence_section(2)}
    row = tables.divergence_table(report).to_dict("records")[0]
    assert (row["model"], row["pattern"], row["first_divergent"], row["worst"]) == (
        "detection",
        "interior",
        "m2",
        "m3",
    )
    assert row["error_after"] == "0.3" and row["matched"] == "4 of 4"
