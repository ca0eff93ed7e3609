"""Data sources as Tasks: one small class per source, each yielding unified records.

Vision: OlmOCR, DocBank, LLaVACC3M, PlotQA, ChartQA, FigureQA, PubTables1M, LaTeXFormulas.
Text: SmolTalk, MMLU, GSM8K, CustomJSON. Mix them with TaskMixture."""
from nanoocr.tasks.chartqa import ChartQA
from nanoocr.tasks.common import HFTask, Task, TaskMixture
from nanoocr.tasks.customjson import CustomJSON
from nanoocr.tasks.docbank import DocBank
from nanoocr.tasks.figureqa import FigureQA
from nanoocr.tasks.gsm8k import GSM8K
from nanoocr.tasks.latex_formulas import LaTeXFormulas
from nanoocr.tasks.llava_cc3m import LLaVACC3M
from nanoocr.tasks.mmlu import MMLU
from nanoocr.tasks.olmocr import OlmOCR
from nanoocr.tasks.plotqa import PlotQA
from nanoocr.tasks.pubtables import PubTables1M
from nanoocr.tasks.smoltalk import SmolTalk

SOURCES = (OlmOCR, DocBank, LLaVACC3M, PlotQA, ChartQA, FigureQA, PubTables1M, LaTeXFormulas,
           SmolTalk, MMLU, GSM8K, CustomJSON)

__all__ = ["Task", "TaskMixture", "HFTask", "SOURCES"] + [cls.__name__ for cls in SOURCES]
