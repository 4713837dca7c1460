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


# ML-1M-format movies of the generated fixtures below (latin-1 titles, official genre names)
ML1M_MOVIES = {"1": "Misérables, Les (1995)::Drama|Musical", "2": "Toy Story (1995)::Animation|Children's|Comedy",
               "3": "Année dernière (1961)::Drama", "4": "Alien (1979)::Horror|Sci-Fi",
               "5": "Heat (1995)::Action|Crime|Thriller", "6": "Café au lait (1994)::Comedy",
               "7": "Fargo (1996)::Crime|Drama|Thriller", "8": "Babe (1995)::Children's|Comedy|Drama",
               "9": "Casablanca (1942)::Drama|Romance|War", "10": "Gattaca (1997)::Drama|Sci-Fi|Thriller",
               "11": "Titanic (1997)::Drama|Romance", "12": "Jaws (1975)::Action|Horror",
               "13": "Vertigo (1958)::Mystery|Thriller", "14": "Rocky (1976)::Action|Drama",
               "15": "Clueless (1995)::Comedy|Romance", "16": "Unforgiven (1992)::Western",
               "17": "Shine (1996)::Drama|Romance", "18": "Speed (1994)::Action|Romance|Thriller",
               "19": "Ran (1985)::Drama|War", "20": "Mulan (1998)::Animation|Children's"}


def ml1m_ratings(n_users: int = 20, ratings_per_user: int = 14, seed: int = 0):
    """Generated ratings [(user, movie, rating, timestamp)]: per user distinct movies at strictly
    increasing times (no ties), users starting at different dates."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        start = 956_700_000 + u * 3 * 86_400
        times = start + np.cumsum(rng.integers(60, 40 * 3_600, ratings_per_user))
        taste = rng.normal()
        for m, t in zip(rng.permutation(len(ML1M_MOVIES))[:ratings_per_user] + 1, times):
            rows.append((u, int(m), int(np.clip(np.round(3 + taste * (m % 5 - 2) + rng.normal()), 1, 5)), int(t)))
    return rows


def _ml1m_users_movies(path, n_users: int):
    path.mkdir(exist_ok=True)
    users = [f"{u}::{'MF'[u % 2]}::{(1, 18, 25, 35, 45, 50, 56)[u % 7]}::{u % 21}::{10000 + 37 * u}"
             for u in range(1, n_users + 1)]
    (path / "users.dat").write_text("\n".join(users) + "\n", encoding="latin-1")
    (path / "movies.dat").write_bytes(("\n".join(f"{m}::{v}" for m, v in ML1M_MOVIES.items()) + "\n")
                                      .encode("latin-1"))


def write_ml1m_official(path, rows, n_users: int = 20):
    """The official ML-1M layout of `rows` (ml1m_ratings): ratings.dat (`::`, timestamps) + users/movies."""
    _ml1m_users_movies(path, n_users)
    (path / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in rows), encoding="latin-1")
    return path


def write_ml1m_ordered(path, rows, n_users: int = 20, duplicate=(3, 5)):
    """The ordered layout of `rows`: ratings.csv.gz `user_id,movie_id,rating,order` (rank in the
    user's history, no timestamps; lines shuffled) + users.dat / movies.dat. `duplicate` (user,
    position): that user re-rates its first movie there (a later duplicate (user, movie) pair,
    rating 6 - the first one), shifting its later ratings by one."""
    import gzip

    _ml1m_users_movies(path, n_users)
    lines, rank = [], {}
    for u, m, r, t in sorted(rows, key=lambda x: (x[0], x[3])):
        if duplicate and u == duplicate[0] and rank.get(u, 0) == duplicate[1]:
            first = next(x for x in rows if x[0] == u and x[3] == min(y[3] for y in rows if y[0] == u))
            lines.append(f"{u},{first[1]},{6 - first[2]},{duplicate[1]}")
            rank[u] = duplicate[1] + 1
        lines.append(f"{u},{m},{r},{rank.get(u, 0)}")
        rank[u] = rank.get(u, 0) + 1
    order = np.random.default_rng(1).permutation(len(lines))
    with gzip.open(path / "ratings.csv.gz", "wt", encoding="utf-8") as f:
        f.write("user_id,movie_id,rating,order\n" + "".join(lines[i] + "\n" for i in order))
    return path
