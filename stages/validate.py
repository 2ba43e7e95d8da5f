"""DVC stage `validate`: the dataset of params `data` against every rule (Great Expectations, with
the pandas engine agreeing); the report, its Data Docs and, only when every rule passes, the
manifest go where params `validate` says. The stage's code is dgnet_pipeline/validate.py."""

import sys

from dgnet_pipeline.validate import main

if __name__ == "__main__":
    sys.exit(main())
