"""MMLU auxiliary_train (cais/mmlu, config `auxiliary_train`): ~100k multiple-choice questions
(ARC, MC_TEST, OBQA, RACE), text only.

Schema: question: str, subject: str, choices: list[str], answer: ClassLabel(A, B, C, D). In the
`auxiliary_train` config of cais/mmlu these four fields are nested under one `train` struct column (the
reason nanochat's MMLU task unwraps `row["train"]`); both the nested and the flat layout are accepted.
The prompt format follows nanochat's MMLU task: the model answers with the letter."""
from nanoocr.data.records import qa
from nanoocr.data.tasks.common import HFTask

LETTERS = "ABCD"


class MMLU(HFTask):
    name = "mmlu"
    HUB_ID = "cais/mmlu"
    default_config = "auxiliary_train"

    def build(self, row, rid):
        row = row.get("train", row) if isinstance(row.get("train"), dict) else row
        choices = "\n".join(f"- {c}={LETTERS[j]}" for j, c in enumerate(row["choices"]))
        prompt = (f"Multiple Choice question: {row['question']}\n{choices}\n\n"
                  "Respond only with the letter of the correct answer.")
        answer = row["answer"]
        return qa(prompt, LETTERS[answer] if isinstance(answer, int) else str(answer), None, rid, self.name)
