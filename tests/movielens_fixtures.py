"""Tiny MovieLens files in the official formats (latin-1), written by the tests themselves."""

import numpy as np

GENRE_FLAGS = {"1": [0, 0, 0, 1, 1, 1] + [0] * 13, "2": [0, 1, 1] + [0] * 13 + [1, 0, 0],
               "3": [0] * 8 + [1] + [0] * 10}


def write_ml100k(path, extra_users: int = 0, ratings_per_user: int = 12, seed: int = 0):
    """u.data (tab), u.user / u.item (pipe, latin-1): 3 movies and 4 hand-written users, plus
    `extra_users` generated ones arriving over time (for end-to-end runs)."""
    rng = np.random.default_rng(seed)
    path.mkdir(exist_ok=True)
    rows, users = [], ["1|24|M|technician|85711", "2|53|F|other|94043", "3|17|M|writer|32067",
                       "4|61|F|retired|10001"]
    users += [f"{u}|{20 + u % 40}|{'MF'[u % 2]}|{['student', 'other', 'writer'][u % 3]}|{10000 + 37 * u}"
              for u in range(5, 5 + extra_users)]
    for u in range(1, 5 + extra_users):
        start = 880_000_000 + (u % 10) * 8 * 86_400 + (300 * 86_400 if u > 4 and u % 6 == 0 else 0)  # late joiners
        times = np.sort(rng.integers(start, start + 90 * 86_400, ratings_per_user))
        times[3] = times[2]  # a tie: two ratings in the same second
        taste = rng.normal()
        previous = None
        for i, t in enumerate(times):
            m = rng.integers(1, 4)
            if i == 3 and m == previous:  # the tie is two different movies (the same one twice is a double log)
                m = m % 3 + 1
            previous = m
            rating = int(np.clip(np.round(3 + taste * (m - 2) + rng.normal()), 1, 5))
            rows.append(f"{u}\t{m}\t{rating}\t{t}")
    (path / "u.data").write_text("\n".join(rows) + "\n", encoding="latin-1")
    (path / "u.user").write_text("\n".join(users) + "\n", encoding="latin-1")
    titles = {"1": "Toy Story (1995)", "2": "Misérables, Les (1995)", "3": "Café au lait (1994)"}
    dates = {"1": "01-Jan-1995", "2": "01-Jan-1995", "3": ""}
    items = [f"{m}|{titles[m]}|{dates[m]}||http://x|" + "|".join(map(str, GENRE_FLAGS[m])) for m in titles]
    (path / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    return path


def write_ml1m(path):
    path.mkdir(exist_ok=True)
    (path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978298413\n"
                                      "2::30::1::978299000\n", encoding="latin-1")
    (path / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n", encoding="latin-1")
    (path / "movies.dat").write_bytes("10::Misérables, Les (1995)::Drama|Musical\n20::Toy Story (1995)::"
                                      "Animation|Children's|Comedy\n30::Année dernière (1961)::Drama\n"
                                      .encode("latin-1"))
    return path
