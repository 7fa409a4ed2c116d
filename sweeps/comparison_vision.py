"""The paper's vision comparison: one arm per command of the official vision README (dense ViT, GMoE, EMoE), on
DomainBed leave-one-domain-out. Run it with ``--preset paper-vit-s`` or ``paper-vit-b`` (PACS; ``--tasks domainbed``
for the paper's four datasets, with each dataset's learning rate), or offline with ``--preset vision-demo``.

The same as `emoe sweep comparison_vision` (the registry: emoe.sweep.ablations)."""

from emoe.sweep import ABLATIONS, main

ABLATION = ABLATIONS["comparison_vision"]

if __name__ == "__main__":
    raise SystemExit(main(ABLATION))
