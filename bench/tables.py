"""The benches' tables: one home for how bench/run.py and bench/stt_accuracy.py print their figures."""


def print_table(title: str, header, rows) -> None:
    """``title``, then ``header`` and ``rows`` as right-aligned columns."""
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    print(f'\n{title}')
    for row in [header, ['-' * w for w in widths], *rows]:
        print('  ' + '  '.join(str(x).rjust(w) for x, w in zip(row, widths)))
