"""VIConv1d, VIConv2d, VIConv3d: the Bayesian counterparts of torch's convolutions."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypedDict

import torch
from torch import Tensor

from .. import functional
from ..functional import _pad_widths
from ..poutine.estimators import AffineOperation, affine
from .base import VIModule, current_num_samples
from .distributions import MeanFieldNormal, Prior, VariationalDistribution
from .random_variable import weight_and_bias
from .utils.checks import check_input_matches, positive_int

_PADDING_STRINGS = ("same", "valid")
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}
_FUNCTIONAL: dict[int, Callable[..., Tensor]] = {
    1: functional.conv1d,
    2: functional.conv2d,
    3: functional.conv3d,
}


class _ConvArguments(TypedDict):
    """The keyword arguments of a convolution besides input, weight and bias."""

    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    padding_mode: str


class _VIConvNd(VIModule):
    """The convolution layers' shared constructor, checks and forward pass.

    A subclass sets ``_dims``, the number of spatial dimensions.
    """

    handles_sample_dim: ClassVar[bool] = True
    # Makes the outermost module's sample_execution="auto" loop over samples on CPU.
    _is_convolution: ClassVar[bool] = True
    _dims: ClassVar[int]

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    transposed: bool
    output_padding: tuple[int, ...]
    groups: int
    padding_mode: str
    _reversed_padding_repeated_twice: list[int] | tuple[int, ...]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int],
        padding: str | int | Sequence[int],
        dilation: int | Sequence[int],
        groups: int,
        bias: bool,
        padding_mode: str,
        variational_distribution: VariationalDistribution
        | Sequence[VariationalDistribution],
        prior: Prior | Sequence[Prior],
        rescale_prior: bool,
        kaiming_initialization: bool,
        prior_initialization: bool,
        return_log_probs: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        dims = self._dims
        in_channels = positive_int(in_channels, "in_channels")
        out_channels = positive_int(out_channels, "out_channels")
        groups = positive_int(groups, "groups")
        for argument, channels in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
        ):
            if channels % groups:
                raise ValueError(
                    f"{argument} must be divisible by groups, got {argument}="
                    f"{channels} and groups={groups}"
                )
        kernel_size_ = _size_tuple(kernel_size, dims, "kernel_size", minimum=1)
        stride_ = _size_tuple(stride, dims, "stride", minimum=1)
        dilation_ = _size_tuple(dilation, dims, "dilation", minimum=1)
        padding_: str | tuple[int, ...]
        if isinstance(padding, str):
            if padding not in _PADDING_STRINGS:
                raise ValueError(
                    f"padding must be 'same', 'valid', a non-negative int or a tuple "
                    f"of {dims} non-negative ints, got {padding!r}"
                )
            if padding == "same" and any(step != 1 for step in stride_):
                raise ValueError(
                    "padding='same' is not supported for strided convolutions, got "
                    f"stride={stride_}"
                )
            padding_ = padding
        else:
            padding_ = _size_tuple(padding, dims, "padding", minimum=0)
        if padding_mode not in _PADDING_MODES:
            raise ValueError(
                "padding_mode must be one of 'zeros', 'reflect', 'replicate', "
                f"'circular', got {padding_mode!r}"
            )
        super().__init__(
            variable_shapes={
                "weight": (out_channels, in_channels // groups, *kernel_size_),
                "bias": (out_channels,) if bias else None,
            },
            variational_distribution=variational_distribution,
            prior=prior,
            rescale_prior=rescale_prior,
            kaiming_initialization=kaiming_initialization,
            prior_initialization=prior_initialization,
            return_log_probs=return_log_probs,
            device=device,
            dtype=dtype,
        )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size_
        self.stride = stride_
        self.padding = padding_
        self.dilation = dilation_
        self.transposed = False
        self.output_padding = (0,) * dims
        self.groups = groups
        self.padding_mode = padding_mode
        # What torch.nn.ConvNd keeps for F.pad (padding modes other than "zeros"): a
        # list for a padding string, a tuple otherwise, as there.
        widths = _pad_widths(padding_, kernel_size_, dilation_)
        self._reversed_padding_repeated_twice = (
            widths if isinstance(padding_, str) else tuple(widths)
        )

    def forward(self, input_: Tensor) -> Tensor:
        """Convolve ``input_`` with the current draw of weight and bias.

        Under :func:`~torch_blue_pyro.poutine.local_reparameterization` or
        :func:`~torch_blue_pyro.poutine.flipout` the output is drawn by that
        estimator instead (see ``torch_blue_pyro.poutine.estimators``).

        Parameters
        ----------
        input_: Tensor
            ``(N, C_in, *spatial)`` or ``(C_in, *spatial)``, with the leading sample
            dimension in torch_blue mode.

        Returns
        -------
        Tensor
            ``(N, C_out, *spatial_out)`` or ``(C_out, *spatial_out)``, with the
            leading sample dimension in torch_blue mode.

        Raises
        ------
        TypeError
            If ``input_`` is not a tensor.
        ValueError
            If ``input_`` does not have ``in_channels`` channels, or has the wrong
            number of dimensions.
        """
        name = type(self).__name__
        if not isinstance(input_, Tensor):
            raise TypeError(
                f"{name} expects a tensor input, got {type(input_).__name__}"
            )
        dims = self._dims
        # In torch_blue mode the input carries the sample dimension; check and report
        # the shape the user passed.
        num_samples = current_num_samples()
        shape = tuple(input_.shape[0 if num_samples is None else 1 :])
        if (
            len(shape) not in (dims + 1, dims + 2)
            or shape[-dims - 1] != self.in_channels
        ):
            spatial = _SPATIAL_NAMES[dims]
            raise ValueError(
                f"{name}(in_channels={self.in_channels}) expects input of shape "
                f"(N, {self.in_channels}, {spatial}) or ({self.in_channels}, "
                f"{spatial}), got {shape}"
            )
        reference = self.get_variational_parameters("weight")[0]
        check_input_matches(name, "input", input_, reference)
        arguments = _ConvArguments(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
        )
        weight, bias = weight_and_bias(self)
        return affine(
            AffineOperation(
                "convolution",
                input_,
                weight,
                bias,
                _FUNCTIONAL[dims],
                arguments,
            )
        )

    def extra_repr(self) -> str:
        """Describe the layer as ``nn.Conv2d`` does."""
        dims = self._dims
        text = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}"
        )
        if self.padding != (0,) * dims:
            text += f", padding={self.padding}"
        if self.dilation != (1,) * dims:
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.variational_distribution["bias"] is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode}"
        return text


def _size_tuple(value: Any, dims: int, argument: str, minimum: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``dims`` ints of at least ``minimum`` (0 or 1)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values: tuple[Any, ...] = (value,) * dims
    elif isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
    else:
        values = ()
    if len(values) != dims or not all(
        isinstance(v, numbers.Integral)
        and not isinstance(v, bool)
        and int(v) >= minimum
        for v in values
    ):
        kind = "positive" if minimum == 1 else "non-negative"
        plural = "s" if dims > 1 else ""
        raise ValueError(
            f"{argument} must be a {kind} int or a tuple of {dims} {kind} int{plural}, "
            f"got {value!r}"
        )
    return tuple(int(v) for v in values)


class VIConv1d(_VIConvNd):
    r"""1-D convolution over signals of several channels, with random weight and bias.

    The Bayesian :class:`torch.nn.Conv1d`, with torch_blue's argument order (torch's
    arguments first, then the variational ones). Its random variables are
    ``("weight", "bias")``: ``weight`` of shape ``(out_channels, in_channels //
    groups, kernel_size)``, ``bias`` of shape ``(out_channels,)``, or ``None`` when
    ``bias=False``; their sites are ``"<path>.weight"`` and ``"<path>.bias"``. In
    torch_blue mode all samples are computed by one convolution (see
    :func:`torch_blue_pyro.functional.conv2d`).

    Parameters
    ----------
    in_channels: int
        Number of channels of the input.
    out_channels: int
        Number of channels of the output.
    kernel_size: int or tuple[int]
        Length of the kernel.
    stride: int or tuple[int], default: 1
        Step of the kernel.
    padding: str or int or tuple[int], default: 0
        ``"valid"`` (none), ``"same"`` (output as long as the input; needs
        ``stride=1``) or the padding added on both sides.
    dilation: int or tuple[int], default: 1
        Spacing between the kernel's taps.
    groups: int, default: 1
        Number of blocked connections from input to output channels; divides both
        ``in_channels`` and ``out_channels``.
    bias: bool, default: True
        Whether to learn an additive bias.
    padding_mode: str, default: "zeros"
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
    variational_distribution: VariationalDistribution or list, default MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior: Prior or list, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`.
    rescale_prior: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    kaiming_initialization: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior_initialization: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    return_log_probs: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    device: torch.device, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dtype: torch.dtype, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.

    Raises
    ------
    ValueError
        If a size is not positive, ``groups`` does not divide the channels,
        ``padding`` or ``padding_mode`` is unknown, or ``padding="same"`` is given
        with a stride.

    Shape
    -----
    - Input: :math:`(N, C_{in}, L_{in})` or :math:`(C_{in}, L_{in})`; in a layer
      nested in torch_blue mode :math:`(S, N, C_{in}, L_{in})` or
      :math:`(S, C_{in}, L_{in})`.
    - Output: :math:`(N, C_{out}, L_{out})` or :math:`(C_{out}, L_{out})`, with
      :math:`L_{out} = \lfloor (L_{in} + 2 p - d (k - 1) - 1) / s \rfloor + 1` for
      padding :math:`p`, dilation :math:`d`, kernel size :math:`k` and stride
      :math:`s`, as in :class:`torch.nn.Conv1d`; the outermost module's output gains
      the leading sample dimension :math:`S`.

    Examples
    --------
    >>> layer = VIConv1d(4, 8, 3, padding="same")
    >>> out = layer(torch.randn(16, 4, 50), samples=5)
    >>> out.shape, out.log_probs.shape
    (torch.Size([5, 16, 8, 50]), torch.Size([5, 2]))
    """

    _dims: ClassVar[int] = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int],
        stride: int | tuple[int] = 1,
        padding: str | int | tuple[int] = 0,
        dilation: int | tuple[int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        variational_distribution: VariationalDistribution
        | Sequence[VariationalDistribution] = MeanFieldNormal(),
        prior: Prior | Sequence[Prior] = MeanFieldNormal(),
        rescale_prior: bool = False,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
            return_log_probs,
            device,
            dtype,
        )


class VIConv2d(_VIConvNd):
    r"""2-D convolution over images of several channels, with random weight and bias.

    The Bayesian :class:`torch.nn.Conv2d`, with torch_blue's argument order (torch's
    arguments first, then the variational ones). Its random variables are
    ``("weight", "bias")``: ``weight`` of shape ``(out_channels, in_channels //
    groups, *kernel_size)``, ``bias`` of shape ``(out_channels,)``, or ``None`` when
    ``bias=False``; their sites are ``"<path>.weight"`` and ``"<path>.bias"``. In
    torch_blue mode all samples are computed by one convolution (see
    :func:`torch_blue_pyro.functional.conv2d`).

    Parameters
    ----------
    in_channels: int
        Number of channels of the input.
    out_channels: int
        Number of channels of the output.
    kernel_size: int or tuple[int, int]
        Height and width of the kernel.
    stride: int or tuple[int, int], default: 1
        Step of the kernel.
    padding: str or int or tuple[int, int], default: 0
        ``"valid"`` (none), ``"same"`` (output as large as the input; needs
        ``stride=1``) or the padding added on both sides.
    dilation: int or tuple[int, int], default: 1
        Spacing between the kernel's taps.
    groups: int, default: 1
        Number of blocked connections from input to output channels; divides both
        ``in_channels`` and ``out_channels``.
    bias: bool, default: True
        Whether to learn an additive bias.
    padding_mode: str, default: "zeros"
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
    variational_distribution: VariationalDistribution or list, default MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior: Prior or list, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`.
    rescale_prior: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    kaiming_initialization: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior_initialization: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    return_log_probs: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    device: torch.device, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dtype: torch.dtype, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.

    Raises
    ------
    ValueError
        If a size is not positive, ``groups`` does not divide the channels,
        ``padding`` or ``padding_mode`` is unknown, or ``padding="same"`` is given
        with a stride.

    Shape
    -----
    - Input: :math:`(N, C_{in}, H_{in}, W_{in})` or :math:`(C_{in}, H_{in}, W_{in})`;
      in a layer nested in torch_blue mode :math:`(S, N, C_{in}, H_{in}, W_{in})` or
      :math:`(S, C_{in}, H_{in}, W_{in})`.
    - Output: :math:`(N, C_{out}, H_{out}, W_{out})` or
      :math:`(C_{out}, H_{out}, W_{out})`, with :math:`H_{out}` and :math:`W_{out}`
      as in :class:`torch.nn.Conv2d`; the outermost module's output gains the leading
      sample dimension :math:`S`.

    Examples
    --------
    >>> layer = VIConv2d(3, 8, kernel_size=3, padding=1)
    >>> out = layer(torch.randn(16, 3, 32, 32), samples=4)
    >>> out.shape, out.log_probs.shape
    (torch.Size([4, 16, 8, 32, 32]), torch.Size([4, 2]))
    """

    _dims: ClassVar[int] = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: str | int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        variational_distribution: VariationalDistribution
        | Sequence[VariationalDistribution] = MeanFieldNormal(),
        prior: Prior | Sequence[Prior] = MeanFieldNormal(),
        rescale_prior: bool = False,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
            return_log_probs,
            device,
            dtype,
        )


class VIConv3d(_VIConvNd):
    r"""3-D convolution over volumes of several channels, with random weight and bias.

    The Bayesian :class:`torch.nn.Conv3d`, with torch_blue's argument order (torch's
    arguments first, then the variational ones). Its random variables are
    ``("weight", "bias")``: ``weight`` of shape ``(out_channels, in_channels //
    groups, *kernel_size)``, ``bias`` of shape ``(out_channels,)``, or ``None`` when
    ``bias=False``; their sites are ``"<path>.weight"`` and ``"<path>.bias"``. In
    torch_blue mode all samples are computed by one convolution (see
    :func:`torch_blue_pyro.functional.conv2d`).

    Parameters
    ----------
    in_channels: int
        Number of channels of the input.
    out_channels: int
        Number of channels of the output.
    kernel_size: int or tuple[int, int, int]
        Depth, height and width of the kernel.
    stride: int or tuple[int, int, int], default: 1
        Step of the kernel.
    padding: str or int or tuple[int, int, int], default: 0
        ``"valid"`` (none), ``"same"`` (output as large as the input; needs
        ``stride=1``) or the padding added on both sides.
    dilation: int or tuple[int, int, int], default: 1
        Spacing between the kernel's taps.
    groups: int, default: 1
        Number of blocked connections from input to output channels; divides both
        ``in_channels`` and ``out_channels``.
    bias: bool, default: True
        Whether to learn an additive bias.
    padding_mode: str, default: "zeros"
        ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
    variational_distribution: VariationalDistribution or list, default MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior: Prior or list, default: MeanFieldNormal()
        See :class:`~torch_blue_pyro.vi.VIModule`.
    rescale_prior: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    kaiming_initialization: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    prior_initialization: bool, default: False
        See :class:`~torch_blue_pyro.vi.VIModule`.
    return_log_probs: bool, default: True
        See :class:`~torch_blue_pyro.vi.VIModule`.
    device: torch.device, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.
    dtype: torch.dtype, optional
        See :class:`~torch_blue_pyro.vi.VIModule`.

    Raises
    ------
    ValueError
        If a size is not positive, ``groups`` does not divide the channels,
        ``padding`` or ``padding_mode`` is unknown, or ``padding="same"`` is given
        with a stride.

    Shape
    -----
    - Input: :math:`(N, C_{in}, D_{in}, H_{in}, W_{in})` or
      :math:`(C_{in}, D_{in}, H_{in}, W_{in})`; in a layer nested in torch_blue mode
      :math:`(S, N, C_{in}, D_{in}, H_{in}, W_{in})` or
      :math:`(S, C_{in}, D_{in}, H_{in}, W_{in})`.
    - Output: :math:`(N, C_{out}, D_{out}, H_{out}, W_{out})` or
      :math:`(C_{out}, D_{out}, H_{out}, W_{out})`, with the sizes as in
      :class:`torch.nn.Conv3d`; the outermost module's output gains the leading
      sample dimension :math:`S`.

    Examples
    --------
    >>> layer = VIConv3d(2, 4, kernel_size=3, padding="same")
    >>> out = layer(torch.randn(8, 2, 6, 6, 6), samples=3)
    >>> out.shape, out.log_probs.shape
    (torch.Size([3, 8, 4, 6, 6, 6]), torch.Size([3, 2]))
    """

    _dims: ClassVar[int] = 3

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: str | int | tuple[int, int, int] = 0,
        dilation: int | tuple[int, int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        variational_distribution: VariationalDistribution
        | Sequence[VariationalDistribution] = MeanFieldNormal(),
        prior: Prior | Sequence[Prior] = MeanFieldNormal(),
        rescale_prior: bool = False,
        kaiming_initialization: bool = True,
        prior_initialization: bool = False,
        return_log_probs: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            variational_distribution,
            prior,
            rescale_prior,
            kaiming_initialization,
            prior_initialization,
            return_log_probs,
            device,
            dtype,
        )
