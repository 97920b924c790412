"""What the command-line tools share: building the Runner from a config
and the command line, and the checks that turn user mistakes into messages
that say what to fix (``ToolError``) before anything is built."""
from .cfg_options import cfg_options_action, check_cfg_options
from .checkpoints import (
    check_checkpoint,
    check_optimizer_state,
    read_checkpoint,
)
from .data_roots import prepare_data_roots
from .errors import ToolError
from .runner import (
                     add_default_hooks,
                     apply_cfg_options,
                     bare_model,
                     build_runner,
                     check_config_path,
                     check_markdown_path,
                     check_out_path,
                     check_work_dir,
                     has_adder_layers,
                     load_config,
                     prepare_cpu_distributed,
                     run_tool,
)

__all__ = [
    'ToolError', 'add_default_hooks', 'apply_cfg_options', 'bare_model',
    'build_runner',
    'cfg_options_action', 'check_cfg_options', 'check_checkpoint',
    'check_optimizer_state',
    'check_config_path', 'check_markdown_path', 'check_out_path',
    'check_work_dir',
    'has_adder_layers',
    'load_config', 'prepare_cpu_distributed', 'prepare_data_roots',
    'read_checkpoint', 'run_tool'
]
