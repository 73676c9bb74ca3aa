"""Build of the connector package: setuptools + setuptools-rust (pyproject.toml)
build libtierkv with cargo into the package. The library is a plain C library that
the binding loads with ctypes, not a CPython extension: any Python 3 on the
platform can load it, so it keeps its C name and the wheel is tagged
``py3-none-<platform>`` (``auditwheel repair`` turns the platform into a manylinux
tag: scripts/build-wheel.sh)."""

from setuptools import setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1
    from wheel.bdist_wheel import bdist_wheel


class PlatformWheel(bdist_wheel):
    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


class PlainLibrary(build_ext):
    """The library keeps its C name (``libtierkv.so``), not a CPython extension's."""

    def get_ext_filename(self, fullname):
        # Called with the module's last name part (get_ext_fullpath adds the
        # package directories).
        if fullname.rsplit(".", 1)[-1] == "libtierkv":
            return "libtierkv.so"
        return super().get_ext_filename(fullname)


setup(cmdclass={"bdist_wheel": PlatformWheel, "build_ext": PlainLibrary})
