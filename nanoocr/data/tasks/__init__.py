"""Data sources as Tasks: one small class per source, each yielding unified records.

Vision: OlmOCR, DocBank, LLaVACC3M, PlotQA, ChartQA, FigureQA, PubTables1M, LaTeXFormulas.
Text: SmolTalk, MMLU, GSM8K, CustomJSON. Mix them with TaskMixture."""
from nanoocr.data.tasks.chartqa import ChartQA
from nanoocr.data.tasks.common import HFTask, Task, TaskMixture
from nanoocr.data.tasks.customjson import CustomJSON
from nanoocr.data.tasks.docbank import DocBank
from nanoocr.data.tasks.figureqa import FigureQA
from nanoocr.data.tasks.gsm8k import GSM8K
from nanoocr.data.tasks.latex_formulas import LaTeXFormulas
from nanoocr.data.tasks.llava_cc3m import LLaVACC3M
from nanoocr.data.tasks.mmlu import MMLU
from nanoocr.data.tasks.olmocr import OlmOCR
from nanoocr.data.tasks.plotqa import PlotQA
from nanoocr.data.tasks.pubtables import PubTables1M
from nanoocr.data.tasks.smoltalk import SmolTalk

SOURCES = (OlmOCR, DocBank, LLaVACC3M, PlotQA, ChartQA, FigureQA, PubTables1M, LaTeXFormulas,
           SmolTalk, MMLU, GSM8K, CustomJSON)

__all__ = ["Task", "TaskMixture", "HFTask", "SOURCES"] + [cls.__name__ for cls in SOURCES]
