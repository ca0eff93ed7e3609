"""PlotQA (achang/plot_qa): scientific plots with a text target.

Schema (dataset_infos.json, an imagefolder export): image: Image, text: str; splits train (157,070) /
validation / test. The card does not describe what `text` holds; it is used as the target verbatim with a
chart-reading prompt. (Not confirmed against a real row.)"""
from nanoocr.data.records import IMAGE_TAG, qa
from nanoocr.data.tasks.common import HFTask, image_bytes

PROMPT = f"{IMAGE_TAG}\nDescribe this chart."  # PlotQA's answers describe the chart


class PlotQA(HFTask):
    name = "plotqa"
    HUB_ID = "achang/plot_qa"
    image_columns = ("image",)

    def build(self, row, rid):
        return qa(PROMPT, row["text"], image_bytes(row["image"]), rid, self.name)
