"""Figures computed from pairs and runs, and their renderings (terminal, PNG, HTML).

- ``analyze``     Report: margins, lengths, flags, routing figures
- ``inspection``  inspect's figures: the report plus seeded sample pairs per margin bin
- ``runstats``    a run's figures: curves by route, reward accuracy per margin bin
- ``stats``       paired intervals over seeds (t, bootstrap), Holm's correction
- ``terminal``    the report as rich tables
- ``plots`` / ``runplots``  the PNG figures of a report and of training runs
- ``page``        the inspect page: Plotly figures, escaped JSON, the pair browser
- ``palette``     the colours and margin label the PNGs and the page share
"""
