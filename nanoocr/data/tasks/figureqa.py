"""FigureQA (vikhyatk/figureqa): synthetic figures with several yes/no questions each.

Schema (dataset card): image: Image(decode=False), qa: list of {question: str, answer: str}; split train
(100,000). All questions of a figure become ONE multi-turn conversation (the image is encoded once)."""
from nanoocr.data.records import IMAGE_TAG
from nanoocr.data.tasks.common import HFTask, image_bytes


class FigureQA(HFTask):
    name = "figureqa"
    HUB_ID = "vikhyatk/figureqa"
    image_columns = ("image",)

    def build(self, row, rid):
        messages = []
        for j, pair in enumerate(row["qa"]):
            question = f"{IMAGE_TAG}\n{pair['question']}" if j == 0 else pair["question"]
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": pair["answer"]}]
        return {"id": rid, "source": self.name, "messages": messages, "image": image_bytes(row["image"])}
