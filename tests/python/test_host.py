"""weightd._host: the process-wide read-only mappings and the arrays built over them."""
import gc
import mmap
import os
import tempfile
import unittest
import warnings
import weakref

import numpy as np

from weightd import _host

try:
    import torch
except ImportError:
    torch = None


class HostArrayTest(unittest.TestCase):
    def setUp(self):
        fd, self.path = tempfile.mkstemp()
        self.addCleanup(os.unlink, self.path)
        self.data = bytes(range(256)) * 64
        with os.fdopen(fd, "wb") as f:
            f.write(self.data)
        self.mapping = _host.map_file(self.path, None)

    def address(self, array):
        return array.__array_interface__["data"][0]

    def test_read_only_array_is_flagged(self):
        array = _host.read_only_array(self.mapping, 100)
        self.assertFalse(array.flags.writeable)
        self.assertEqual(array.tobytes(), self.data[:100])

    def test_unflagged_array_views_the_mapping_unflagged(self):
        array = _host.unflagged_array(self.mapping, 1000)
        self.assertTrue(array.flags.writeable)
        self.assertEqual((array.dtype, array.shape), (np.dtype(np.uint8), (1000,)))
        self.assertEqual(self.address(array),
                         self.address(_host.read_only_array(self.mapping, 1)))
        self.assertEqual(array.tobytes(), self.data[:1000])
        self.assertEqual(len(_host.unflagged_array(self.mapping, 0)), 0)

    def test_unflagged_array_keeps_the_mapping_open(self):
        array = _host.unflagged_array(self.mapping, len(self.data))
        with self.assertRaises(BufferError):  # a view of it is held
            self.mapping.close()
        view = np.ndarray((4,), np.dtype("<u4"), array, 8, (4,))
        alive = weakref.ref(self.mapping)
        del array
        self.mapping = None  # the cache holds it weakly: the view alone keeps it alive
        gc.collect()
        self.assertIsNotNone(alive())
        self.assertEqual(view.tobytes(), self.data[8:24])
        del view
        gc.collect()
        self.assertIsNone(alive())

    def test_mapping_itself_is_read_only(self):
        self.assertIsInstance(self.mapping, mmap.mmap)
        with self.assertRaises(TypeError):
            self.mapping[0] = 1

    @unittest.skipIf(torch is None, "torch is not installed")
    def test_torch_takes_unflagged_arrays_without_warning(self):
        array = _host.unflagged_array(self.mapping, 64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tensor = torch.from_numpy(np.ndarray((16,), np.dtype("<i4"), array, 0, (4,)))
            flagged = torch.from_numpy(_host.read_only_array(self.mapping, 64))
        self.assertEqual(len(caught), 1, [str(w.message) for w in caught])  # flagged only
        self.assertIn("not writable", str(caught[0].message))
        self.assertEqual(tensor.data_ptr(), flagged.data_ptr())
        self.assertEqual(tensor.numpy().tobytes(), self.data[:64])


if __name__ == "__main__":
    unittest.main()
