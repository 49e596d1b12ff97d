"""The exact nearest code (distill/models/nearest.py): what lets files be encoded together."""
from __future__ import annotations

import torch

from distill.models.nearest import nearest_codes


def brute_force(x: torch.Tensor, book: torch.Tensor) -> torch.Tensor:
    return ((x.double()[:, None, :] - book.double()[None]) ** 2).sum(-1).argmin(-1)


def near_ties(n: int = 300, k: int = 32, d: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors halfway between two codes, give or take less than float32 can tell apart."""
    g = torch.Generator().manual_seed(seed)
    book = torch.randn(k, d, generator=g) * 3
    a = torch.randint(0, k, (n,), generator=g)
    b = (a + 1 + torch.randint(0, k - 1, (n,), generator=g)) % k
    x = (book[a] + book[b]) / 2 + 1e-6 * torch.randn(n, d, generator=g)
    return x, book


def test_each_vector_gets_its_exact_nearest_code_even_at_near_ties():
    x, book = near_ties()
    float32 = torch.addmm(book.pow(2).sum(1), x, book.T, alpha=-2).min(1).indices
    exact = brute_force(x, book)
    assert (float32 != exact).any()  # float32 alone gets some of these wrong: the test can fail
    assert torch.equal(nearest_codes(x, book), exact)
    g = torch.Generator().manual_seed(1)
    far = torch.randn(500, 64, generator=g) * 5  # and the ordinary case
    assert torch.equal(nearest_codes(far, book), brute_force(far, book))


def test_a_vectors_code_does_not_depend_on_the_rows_beside_it():
    x, book = near_ties(n=120, seed=2)
    together = nearest_codes(x, book)
    for rows in list(range(1, 25)) + [40, 64, 100]:
        for start in (0, 7):
            assert torch.equal(nearest_codes(x[start:start + rows], book), together[start:start + rows])


def test_exact_ties_take_the_first_code_and_bands_are_searched_each_in_its_own_book():
    x, book = near_ties(n=50, k=16, seed=3)
    book[9] = book[4]  # two identical codes: the first is chosen
    assert not (nearest_codes(x, book) == 9).any()
    assert torch.equal(nearest_codes(book[4:5], book), torch.tensor([4]))
    # bands: x [G, N, D] against books [G, K, D]
    x2, book2 = near_ties(n=50, k=16, seed=4)
    xs, books = torch.stack([x, x2]), torch.stack([book, book2])
    got = nearest_codes(xs, books)
    assert torch.equal(got[0], brute_force(x, book)) and torch.equal(got[1], brute_force(x2, book2))
