import pytest

# helpers.py holds shared assertions (expect_row); rewrite them so failures show their operands.
pytest.register_assert_rewrite("tests.states.helpers")
