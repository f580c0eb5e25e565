"""The colours and the margin axis label that every figure of prefcurate shares.

The PNGs of analyze and route (matplotlib, :mod:`prefcurate.reporting.plots`) and the inspect
page (Plotly, :mod:`prefcurate.reporting.page`) draw the two routes in the same colours. The values
live here, apart from either plotting library, so the page does not import matplotlib to read four
strings.
"""

from __future__ import annotations

#: pairs routed to supervised fine-tuning on the chosen response (margin < τ)
SFT_COLOR = "#d9822b"
#: pairs routed to the preference loss
DPO_COLOR = "#3a6ea5"
#: figures that are not split by route
NEUTRAL_COLOR = "#5b7083"
#: the τ line
CUT_COLOR = "#b3261e"
MARGIN_LABEL = "margin (score_chosen − score_rejected)"
