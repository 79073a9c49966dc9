from ltu_lightning.cli import main

main()
