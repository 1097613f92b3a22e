"""Classes from outside our modules that the run gins name (`@TextToTextFeatureConverter()`)."""

import gin

from unified_io.data.text_converter import TextToTextFeatureConverter

gin.external_configurable(TextToTextFeatureConverter, module="unified_io.data")
