"""The two prompt modes of the dataset builder.

- `raw`: the user's own format (seed 000): the full rubric system prompt (`assets/oral_rubric_zh.txt`)
  and a user turn holding the passage and the compact 9-field ISE string. Long: thousands of tokens.
- `evidence`: a compact rubric summary as the system prompt (the full rubric alone is ~550 tiny-
  tokenizer tokens and restates the same bands) and a user turn with the metrics the engine computed
  (N, counts, accuracies, 字/分钟, internal fil count and ratio, 增读/漏读/回读, completeness). The
  bands are derivable from the numbers alone; the model verbalises them and writes the 评语 (§0.11).

The evidence system prompt states the scale of the labels it is trained on: the rubric's bands are
5/3/1, but teachers score 1-5 and use 2 and 4 (38-51% of the real teacher labels are a 2 or a 4), so
`evidence_messages(..., scale="teacher")` says so and gives the rubric bands only as reference points.
A result ISE rejected gets one more evidence line (flag, except_info, reason, ISE's ×0.3).
The raw prompt's field legend follows the rows it embeds: 9 fields for compact9, the upstream
converter's 6 fields `{beg_pos,end_pos,dp_message,mono_tone,is_yun,perr_msg}` for legacy6.

Displayed numbers are rounded TOWARDS the worse side (floor for accuracies, rate and completeness,
ceil for the pause ratio) to one decimal. All band edges are one-decimal numbers, so a displayed value
always sits on the same side of an edge as the exact Fraction (89.96% shows 89.9%, not 90.0%).
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from importlib import resources

from glmtune.tasks.oral_reading.rubric import OralMetrics

_RULES = ("声母、韵母、声调正确率≥90%为5，≥70%为3，否则1；语速≥120字/分钟为5，≥60为3，否则1；"
          "句中停顿(fil数/总字数)≤3%为5，≤10%为3，否则1；完整度=1-(增读+漏读+回读)/总字数，≥95%为5，≥85%为3，否则1。")
_ONE_LINE = "只输出一行：语速:X;停顿:X;声母:X;韵母:X;声调:X;完整度:X;评语:…"
EVIDENCE_SYSTEM = ("你是给留学生中文口语打分的国汉老师。下面的指标由程序从语音评测(ISE)结果算出。按规则打分(5/3/1)："
                   + _RULES + _ONE_LINE)
EVIDENCE_SYSTEM_TEACHER = ("你是给留学生中文口语打分的国汉老师。下面的指标由程序从语音评测(ISE)结果算出。"
                           "每项按1-5分整体打分，可以给2和4；下面的规则档位(5/3/1)只作参考：" + _RULES + _ONE_LINE)
SCALES = ("rubric", "teacher")
RAW_LEGEND = "{beg_pos,end_pos,symbol,time_len,rec_node_type,dp_message,is_yun,perr_msg,perr_level_msg};(null为空值)"
RAW_LEGEND_LEGACY6 = "{beg_pos,end_pos,dp_message,mono_tone,is_yun,perr_msg};(空值代表无此属性)"
RAW_ASK = ("你是一位给留学生中文口语打分的国汉老师，请你给我的语速、停顿、声母、韵母、声调和完整度进行分别打分并给出评语。"
           "输出格式例子：语速:2;停顿:3;声母:3;韵母:3;声调:3;完整度:5;评语:朗读不够流利，有少许声母韵母错误，但完成度很好，希望继续努力~!")


@lru_cache(maxsize=1)
def rubric_system_prompt() -> str:
    return (resources.files("glmtune") / "assets" / "oral_rubric_zh.txt").read_text("utf-8").strip()


def floor1(x: Fraction) -> str:
    return f"{math.floor(x * 10) / 10:.1f}"


def ceil1(x: Fraction) -> str:
    return f"{math.ceil(x * 10) / 10:.1f}"


def evidence_lines(m: OralMetrics) -> list[str]:
    dur = m.duration_s
    return [
        f"总字数N={m.n}；漏读{m.n_omit}，替换{m.n_sub}，增读{m.n_ins}，回读{m.n_rep}",
        f"声母错{m.e_init}，正确率{floor1(m.acc_initial * 100)}%；韵母错{m.e_final}，正确率{floor1(m.acc_final * 100)}%；"
        f"声调错{m.e_tone}，正确率{floor1(m.acc_tone * 100)}%",
        f"语速{floor1(m.rate_per_min)}字/分钟（首字到末字{floor1(dur) if dur is not None else '0.0'}秒）",
        f"句中停顿fil{m.f_int}个，占{ceil1(m.pause_ratio * 100)}%（句首{m.f_lead}，句尾{m.f_trail}）",
        f"完整度{floor1(m.completeness * 100)}%",
    ]


def rejection_line(m: OralMetrics) -> str | None:
    r = m.rejection
    if not r:
        return None
    return f"ISE拒识：except_info={r['except_info']}（{r['reason']}），ISE给出的分数是重算值×{r['ise_factor']}"


def evidence_messages(text: str, m: OralMetrics, scale: str = "rubric", flag_rejected: bool = True) -> list[dict]:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    lines = evidence_lines(m)
    if flag_rejected and rejection_line(m):
        lines.append(rejection_line(m))
    user = f"朗读内容：{text}\n" + "\n".join(lines)
    system = EVIDENCE_SYSTEM_TEACHER if scale == "teacher" else EVIDENCE_SYSTEM
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def raw_messages(text: str, compact: str, source_format: str = "compact9") -> list[dict]:
    legend = RAW_LEGEND_LEGACY6 if source_format == "legacy6" else RAW_LEGEND
    user = (f"我是一位学习中文口语的留学生，我的朗读内容是{{{text}}}。我的音频的量化数据是{{此数据为学生音频量化数据，"
            f"格式为：content:{legend}{compact}}}。{RAW_ASK}")
    return [{"role": "system", "content": rubric_system_prompt()}, {"role": "user", "content": user}]
