"""GSM8K (openai/gsm8k, config `main`): grade-school math word problems, text only.

Schema (dataset card): question: str, answer: str (worked solution with calculator annotations
`<<48/2=24>>`, ending in `#### <number>`). The annotations are removed: nanoocr runs no calculator tool,
so a model should not learn to emit tool markup that nothing executes."""
import re

from nanoocr.data.records import qa
from nanoocr.data.tasks.common import HFTask

CALC = re.compile(r"<<[^>]*>>")


class GSM8K(HFTask):
    name = "gsm8k"
    HUB_ID = "openai/gsm8k"
    default_config = "main"

    def build(self, row, rid):
        return qa(row["question"], CALC.sub("", row["answer"]), None, rid, self.name)
