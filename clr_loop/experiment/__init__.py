"""The CLI's experiment, a client of the clr_loop library.

The Config and its checks (`config`), the tutorial's Fashion-MNIST sources (`fashion_mnist`), the
`--dataset` registry (`datasets`), the models a run can name (`models`), the trial that builds a
Config's model, optimizer and schedule and trains it with the library's loop (`trial`), and the
figures (`figures`). The apps (`clr_loop.train`, `clr_loop.ablate`, `clr_loop.lr_range_test`,
`clr_loop.plot`) import it; the library never does.
"""
