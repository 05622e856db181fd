from dmac_lightning.cli import main

if __name__ == "__main__":  # env worker processes (spawn) import this module again: do not re-run
    main()
