"""LaTeX-formulas (OleehyO/latex-formulas), config `cleaned_formulas`: printed formula images → LaTeX.

Schema (dataset card, cleaned_formulas): image: Image, latex_formula: str; split train (552,340).
(The `raw_formulas` config has no images and is not usable here.)"""
from nanoocr.data.records import FORMULA_PROMPT, qa
from nanoocr.data.tasks.common import HFTask, image_bytes


class LaTeXFormulas(HFTask):
    name = "latex_formulas"
    HUB_ID = "OleehyO/latex-formulas"
    default_config = "cleaned_formulas"
    image_columns = ("image",)

    def build(self, row, rid):
        return qa(FORMULA_PROMPT, row["latex_formula"], image_bytes(row["image"]), rid, self.name)
