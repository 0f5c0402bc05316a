"""The release record: the report schema and what the notebooks show and record.

``schema`` is the one ``export_report.json`` schema; ``tables`` / ``plots`` turn
reports and comparison details into DataFrames and figures; ``record`` stores
values in an executed notebook; ``notebook`` holds the stage plumbing the
notebooks call. Nothing here runs a model.
"""
