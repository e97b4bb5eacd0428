"""The official kernel conformance suite, against stock ipykernel and Cave in the same run.

Both classes share one configuration, so "every test that passes on stock ipykernel passes on
Cave" is checked directly rather than assumed.
"""

from __future__ import annotations

import jupyter_kernel_test as jkt


class _PythonKernelSamples:
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('oops', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise ValueError('boom')"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(3)]", "result": "[0, 1, 4]"},
    ]
    code_display_data = [
        {
            "code": "from IPython.display import HTML, display; display(HTML('<b>x</b>'))",
            "mime": "text/html",
        },
        {
            "code": "from IPython.display import Math, display; display(Math(r'\\frac{1}{2}'))",
            "mime": "text/latex",
        },
    ]
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


class TestStockIPykernel(_PythonKernelSamples, jkt.KernelTests):
    kernel_name = "python3"


class TestCaveKernel(_PythonKernelSamples, jkt.KernelTests):
    kernel_name = "cave"
