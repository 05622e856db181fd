from dmac_lightning.cli import main

main()
