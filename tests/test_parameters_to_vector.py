"""nn.utils.parameters_to_vector and vector_to_parameters, as torch.nn.utils's (NumPy arrays for tensors)."""
import numpy as np
import pytest

import nanotorch.nn as nn
from nanotorch.nn.module import Parameter
from nanotorch.nn.utils import flatten_parameters, parameters_to_vector, vector_to_parameters

SHAPES = [(4, 3), (5,), (), (2, 3, 2)]


def make_params(rng, dtype=np.float64):
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def test_parameters_to_vector_is_torchs_concatenation():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    params = make_params(rng)
    vec = parameters_to_vector(params)
    t_vec = torch.nn.utils.parameters_to_vector([torch.from_numpy(p.data.copy()) for p in params])
    assert vec.shape == (4 * 3 + 5 + 1 + 12,) and vec.dtype == np.float64
    np.testing.assert_array_equal(vec, t_vec.numpy())
    vec[0] = 99.0                                                   # a new array, not a view
    assert params[0].data[0, 0] != 99.0
    mixed = parameters_to_vector(iter([Parameter(np.ones(2, np.float32)), Parameter(np.zeros(1))]))
    assert mixed.dtype == np.float64 and mixed.tolist() == [1.0, 1.0, 0.0]        # promoted, as torch.cat
    np.testing.assert_array_equal(parameters_to_vector(params[0]), params[0].data.ravel())   # one Parameter


def test_vector_to_parameters_copies_into_each_parameter_in_place_as_torchs_values():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    params = make_params(rng, np.float32)
    arrays = [p.data for p in params]
    vec = rng.standard_normal(30)                                   # float64 into float32 parameters
    expected = vec.astype(np.float32)
    vector_to_parameters(vec, params)
    t_params = [torch.zeros(s, dtype=torch.float32) for s in SHAPES]
    torch.nn.utils.vector_to_parameters(torch.from_numpy(vec.astype(np.float32)), t_params)
    for p, a, tp in zip(params, arrays, t_params):
        assert p.data is a and p.data.dtype == np.float32           # in place: the same array, its dtype
        np.testing.assert_array_equal(p.data, tp.numpy())
    vec[0] = 99.0                                                   # copied, not a view of vec
    np.testing.assert_array_equal(parameters_to_vector(params), expected)


def test_vector_to_parameters_writes_through_flattened_parameters_and_a_model():
    """In place, so the views nn.utils.flatten_parameters made stay the model's parameters."""
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    flat = flatten_parameters(model.parameters())
    vec = np.arange(flat.data.size, dtype=np.float32)
    vector_to_parameters(vec, model.parameters())
    np.testing.assert_array_equal(flat.data, vec)
    np.testing.assert_array_equal(parameters_to_vector(model.parameters()), vec)
    assert model[0].weight.data[1, 0] == 3.0


def test_vector_to_parameters_refuses_a_wrong_vector_before_writing_anything():
    """PyTorch raises for a short vector only, and silently ignores the rest of a long one or reshapes a
    2-D one; here each is a clear error and no parameter is changed."""
    params = make_params(np.random.default_rng(2))
    before = [p.data.copy() for p in params]
    for vec, error, message in ((np.zeros(29), ValueError, "29 values.*30"),
                                (np.zeros(31), ValueError, "31 values.*30"),
                                (np.zeros((5, 6)), ValueError, r"1-D.*\(5, 6\)"),
                                ([0.0] * 30, TypeError, "NumPy array.*list")):
        with pytest.raises(error, match=message):
            vector_to_parameters(vec, params)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)
    with pytest.raises(ValueError, match="no parameters"):
        parameters_to_vector([])
    with pytest.raises(TypeError, match="Parameters.*ndarray"):
        parameters_to_vector([np.zeros(3)])
    vector_to_parameters(np.zeros(0), [])                           # nothing to fill: nothing to do, as torch


def test_exported_where_torchs_live():
    import nanotorch.nn.utils as utils
    assert nn.utils.parameters_to_vector is utils.parameters_to_vector is parameters_to_vector
    assert nn.utils.vector_to_parameters is vector_to_parameters
