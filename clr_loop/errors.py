"""The base of the errors clr_loop raises for a caller's mistake or an unusable input.

Every such error (a bad argument, unusable data, a workdir or checkpoint that cannot be used, a
cluster that cannot be reached, a model or weights file that does not fit) is an `Error`; each
class also keeps its builtin base (`ValueError`, `RuntimeError`, ...), so `except ValueError`
code written before this module still catches what it did. A program that drives clr_loop
catches `errors.Error` for "the caller or its inputs are at fault", as clr_loop's own apps do,
and reads `argument` to point at what to change, without reading the message.

Errors that are not a caller's mistake (a bug, TensorFlow's own failures) are not `Error`s.
"""

import contextlib


def same_name(name):
    """Returns `name` unchanged: the naming of arguments in messages for code (`Error.describe`'s default).

    Args:
        name: the name of a function argument or Config field.

    Returns:
        `name` itself.
    """
    return name


class Error(Exception):
    """The base of every error clr_loop raises for a caller's mistake or an unusable input.

    The message (`str(error)`) says what is wrong and names the file, folder, argument or peer at
    fault, so it can be shown as is. `argument` is the name of the one function argument (for the
    experiment: the one Config field) at fault, or None when no one argument is (a lost cluster
    peer, a corrupt file found through several settings).

    Args:
        message: what is wrong, one line, naming the culprit.
        argument: the name of the argument at fault, or None (keyword only).

    Example:
        >>> from clr_loop import errors
        >>> class SizeError(errors.Error, ValueError):
        ...     pass
        >>> try:
        ...     raise SizeError("batch_size must be positive, got 0", argument="batch_size")
        ... except errors.Error as e:
        ...     print(e.argument, isinstance(e, ValueError))
        batch_size True
    """

    # True when the message itself names `argument` in the way `describe` renders it (a problem
    # list naming each field), so a caller that shows the argument need not prefix it.
    names_argument = False

    def __init__(self, message="", *args, argument=None):
        super().__init__(message, *args)
        self.argument = argument

    def describe(self, name=same_name):
        """Returns the message with any arguments it refers to spelled by `name`.

        A subclass whose messages refer to arguments in a marked way (the experiment's Config
        problems) overrides this to render them; the base returns `str(self)`.

        Args:
            name: a function from an argument's name to how it should be shown (for a command
                line, `lambda n: f"--{n}"`).

        Returns:
            The message, one or more lines.
        """
        del name  # the base's message refers to nothing in a marked way
        return str(self)


@contextlib.contextmanager
def blaming(argument):
    """Inside the block, an `Error` that names no argument is given `argument` (and re-raised).

    For a function that passes one of its arguments on: the callee's errors are about what that
    argument selected (a folder, a file), so the caller's argument is the one to change.

    Args:
        argument: the name of the caller's argument to set as the errors' `argument`.

    Yields:
        None.

    Raises:
        Error: the error raised inside the block, with `argument` set when it had none.

    Example:
        >>> from clr_loop import errors
        >>> try:
        ...     with errors.blaming("dataset_dir"):
        ...         raise errors.Error("/data: directory does not exist")
        ... except errors.Error as e:
        ...     print(e.argument)
        dataset_dir
    """
    try:
        yield
    except Error as e:
        if e.argument is None:
            e.argument = argument
        raise
