"""ChartQA (HuggingFaceM4/ChartQA): chart images with human and machine-written questions.

Schema (dataset card): image: Image, query: str, label: list[str], human_or_machine: ClassLabel(human, machine).
Splits train (28,299) / val / test. The first label is the answer."""
from nanoocr.data.records import IMAGE_TAG, qa
from nanoocr.data.tasks.common import HFTask, image_bytes


class ChartQA(HFTask):
    name = "chartqa"
    HUB_ID = "HuggingFaceM4/ChartQA"
    image_columns = ("image",)

    def build(self, row, rid):
        label = row["label"]
        answer = label[0] if isinstance(label, list) and label else label
        return qa(f"{IMAGE_TAG}\n{row['query']}", answer, image_bytes(row["image"]), rid, self.name)
