"""The pipeline's steps, one module each, and the command line that runs them
(cli.py). Steps may import the library modules of data_gen and each other;
the library never imports a step."""
