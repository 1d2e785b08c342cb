"""Rule report_pages: the tables as HTML pages and the headline of the report's first page
(report.pages.write_pages), for `snakemake --report`."""
from subspace_fsl.report.pages import write_pages
from subspace_fsl.snakemake_job import job

with job(snakemake) as cfg:
    write_pages(cfg)
