"""LabelHub: the annotation web app where domain experts label, write and review data that goes
straight into `lora train`, `distill`, `domains train` and `safety train`.

    tables.py     the schema (SQLAlchemy Core; created by the shared Alembic history in db/)
    tasks.py      the task types: what an item holds and what an annotation may say
    auth.py       passwords (argon2), sessions and CSRF tokens, roles
    store.py      projects, members, items, pre-labels, annotations, reviews, the next item
    agreement.py  inter-annotator agreement (Cohen, Fleiss, Krippendorff)
    stats.py      progress, agreement and label distribution of a project (the dashboards)
    export.py     training files with provenance
    prelabel.py   pre-labels from the project's own models
    web.py        the FastAPI app: JSON API and server-rendered pages
    commands.py   `lightseek label ...`
"""
